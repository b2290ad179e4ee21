"""Secret resources on the real Docker daemon: an agent's ``secretKeyRef`` reaches its container's env,
a changed secret rolls the agent, a missing one gives ``SecretMissing`` and no container change, and no
response (nor the store's files) ever holds a value."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from tests.harness import Controller, docker_exec, inspect, running, wait_for

pytestmark = pytest.mark.docker

FIRST = "sk-ant-first-6d1f0c93b7e2"
SECOND = "sk-ant-second-a83e27c5d410"
INLINE = "sk-inline-value-4c09be7d12"
REF = {"secretKeyRef": {"name": "pxsc-anthropic", "key": "apiKey"}}


@pytest.fixture
async def controller(start_controller) -> Controller:  # type: ignore[no-untyped-def]
    import uuid

    return await start_controller(network=f"pxsc-{uuid.uuid4().hex[:8]}")


async def _env_in_container(name: str, variable: str) -> str:
    code, out = await docker_exec(f"parallax-agent-{name}", "sh", "-c", f'printf %s "${variable}"')
    assert code == 0, out
    return out


def _store_bytes(controller: Controller) -> bytes:
    directory = Path(controller.settings.store_path).parent
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file() and p.name != "secret.key")


async def test_a_secret_reference_reaches_the_container_and_a_changed_secret_rolls_it(
    controller: Controller, docker: aiodocker.Docker
):
    seen: list[str] = []
    status, body = await controller.request(
        "POST", "/secrets", {"metadata": {"name": "pxsc-anthropic"}, "stringData": {"apiKey": FIRST}}
    )
    seen.append(json.dumps(body))
    assert status == 201, body
    assert body["keys"] == {"apiKey": {"version": 1}} and body["version"] == 1 and body["usedBy"] == []

    status, body = await controller.request(
        "POST", "/agents", {"name": "pxsc-ref", "type": "claude", "env": {"ANTHROPIC_API_KEY": REF, "INLINE": INLINE}}
    )
    seen.append(json.dumps(body))
    assert status == 201, body
    assert body["spec"]["env"] == {"ANTHROPIC_API_KEY": REF, "INLINE": "<redacted>"}
    before = await controller.wait_agent("pxsc-ref", running, timeout=60)
    assert await _env_in_container("pxsc-ref", "ANTHROPIC_API_KEY") == FIRST
    assert await _env_in_container("pxsc-ref", "INLINE") == INLINE

    for path in ("/secrets", "/secrets/pxsc-anthropic", "/agents/pxsc-ref", "/agents", "/agents/pxsc-ref/events"):
        status, body = await controller.request("GET", path)
        assert status == 200, body
        seen.append(json.dumps(body))
    status, shown = await controller.request("GET", "/secrets/pxsc-anthropic")
    assert shown["usedBy"] == ["pxsc-ref"] and shown["keys"] == {"apiKey": {"version": 1}}

    status, body = await controller.request(
        "PUT",
        "/secrets/pxsc-anthropic",
        {"metadata": {"name": "pxsc-anthropic"}, "data": {"apiKey": base64.b64encode(SECOND.encode()).decode()}},
    )
    seen.append(json.dumps(body))
    assert status == 200, body
    assert body["version"] == 2 and body["keys"] == {"apiKey": {"version": 2}}
    after = await controller.wait_agent(
        "pxsc-ref",
        lambda a: running(a) and a["status"].get("containerId") != before["status"]["containerId"],
        timeout=60,
    )
    assert await _env_in_container("pxsc-ref", "ANTHROPIC_API_KEY") == SECOND
    info = await inspect(docker, "parallax-agent-pxsc-ref")
    assert info is not None and info["Id"] == after["status"]["containerId"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]  # the spec did not change
    labels = json.dumps(info["Config"]["Labels"])

    text = "\n".join(seen) + labels
    for value in (FIRST, SECOND, INLINE, base64.b64encode(SECOND.encode()).decode()):
        assert value not in text
    stored = _store_bytes(controller)
    for value in (FIRST, SECOND, INLINE):
        assert value.encode() not in stored


async def test_a_missing_secret_gives_secret_missing_and_no_container_change(
    controller: Controller, docker: aiodocker.Docker
):
    status, body = await controller.request(
        "POST", "/agents", {"name": "pxsc-miss", "type": "claude", "env": {"K": REF}}
    )
    assert status == 201, body
    missing = await controller.wait_agent(
        "pxsc-miss",
        lambda a: any(
            c["type"] == "SecretMissing" and c["status"] == "True" for c in a["status"].get("conditions", [])
        ),
    )
    condition = next(c for c in missing["status"]["conditions"] if c["type"] == "SecretMissing")
    assert "'pxsc-anthropic' does not exist" in condition["message"]
    assert missing["status"]["error"]["code"] == "SECRET_MISSING"
    assert await inspect(docker, "parallax-agent-pxsc-miss") is None
    status, events = await controller.request("GET", "/agents/pxsc-miss/events")
    assert any(e["reason"] == "SecretMissing" for e in events["items"]), events

    status, body = await controller.request(
        "POST", "/secrets", {"metadata": {"name": "pxsc-anthropic"}, "stringData": {"other": FIRST}}
    )
    assert status == 201, body
    wrong_key = await controller.wait_agent(
        "pxsc-miss", lambda a: "has no key 'apiKey'" in json.dumps(a["status"].get("conditions", []))
    )
    assert FIRST not in json.dumps(wrong_key)
    assert await inspect(docker, "parallax-agent-pxsc-miss") is None

    status, body = await controller.request(
        "PUT", "/secrets/pxsc-anthropic", {"stringData": {"apiKey": FIRST}, "metadata": {"name": "pxsc-anthropic"}}
    )
    assert status == 200, body
    started = await controller.wait_agent("pxsc-miss", running, timeout=60)
    assert not any(c["type"] == "SecretMissing" for c in started["status"]["conditions"])
    assert await _env_in_container("pxsc-miss", "K") == FIRST

    # Deleting a secret in use is allowed (as in Kubernetes): the agent is marked, its container kept.
    status, _ = await controller.request("DELETE", "/secrets/pxsc-anthropic")
    assert status == 204
    marked = await controller.wait_agent(
        "pxsc-miss", lambda a: any(c["type"] == "SecretMissing" for c in a["status"].get("conditions", []))
    )
    info = await inspect(docker, "parallax-agent-pxsc-miss")
    assert info is not None and info["State"]["Running"] and info["Id"] == started["status"]["containerId"]
    assert marked["status"]["containerId"] == started["status"]["containerId"]

    # Deleting the agent still removes its container, secret or no secret.
    status, _ = await controller.request("DELETE", "/agents/pxsc-miss")
    assert status == 202
    await controller.wait_gone("pxsc-miss", timeout=60)

    async def gone() -> bool:
        return await inspect(docker, "parallax-agent-pxsc-miss") is None

    await wait_for(gone, what="the container to be removed")


async def test_bad_secrets_are_refused_naming_the_field_and_never_the_value(controller: Controller):
    cases = [
        ({"metadata": {"name": "Bad_Name"}, "stringData": {"k": "v"}}, 422, "metadata.name"),
        ({"metadata": {"name": "ok"}, "stringData": {"bad key!": FIRST}}, 422, "stringData.bad key!"),
        ({"metadata": {"name": "ok"}, "data": {"k": FIRST + "%%"}}, 422, "data.k"),
        ({"metadata": {"name": "ok"}, "stringData": {"k": FIRST + "\u0000"}}, 422, "stringData.k"),
        ({"metadata": {"name": "ok"}, "stringData": {"k": "x" * 32769}}, 422, "stringData.k"),
        ({"metadata": {"name": "ok"}, "stringData": {f"k{i}": "v" for i in range(65)}}, 422, "data"),
        ({"metadata": {"name": "ok"}}, 422, "data"),
        ({"metadata": {"name": "ok"}, "stringData": {"k": "v"}, "spec": {}}, 422, "spec"),
    ]
    for body, code, field in cases:
        status, answer = await controller.request("POST", "/secrets", body)
        assert status == code, (body.get("metadata"), answer)
        assert field in [d["field"] for d in answer["error"]["details"]], answer
        assert FIRST not in json.dumps(answer)
    status, answer = await controller.request("PUT", "/secrets/pxsc-nothing", {"stringData": {"k": "v"}})
    assert status == 404, answer
    status, answer = await controller.request("DELETE", "/secrets/pxsc-nothing")
    assert status == 404, answer
    assert (await controller.request("POST", "/secrets", {"metadata": {"name": "pxsc-dup"}, "stringData": {"k": "v"}}))[
        0
    ] == 201
    status, answer = await controller.request(
        "POST", "/secrets", {"metadata": {"name": "pxsc-dup"}, "stringData": {"k": "v"}}
    )
    assert status == 409, answer
    status, answer = await controller.request(
        "PUT", "/secrets/pxsc-dup", {"metadata": {"name": "pxsc-other"}, "stringData": {"k": "v"}}
    )
    assert status == 422 and "metadata.name" in json.dumps(answer)
    status, answer = await controller.request(
        "POST",
        "/agents",
        {"name": "pxsc-badref", "type": "claude", "env": {"K": {"secretKeyRef": {"name": "UPPER", "key": "k"}}}},
    )
    assert status == 422 and "env.K" in json.dumps(answer), answer


async def test_apply_takes_secret_documents_without_ever_printing_a_value(
    controller: Controller, docker: aiodocker.Docker
):
    def documents(value: str) -> str:
        encoded = base64.b64encode(value.encode()).decode()
        return (
            "apiVersion: parallax.ai/v1\nkind: Secret\nmetadata:\n  name: pxsc-anthropic\n"
            f"data:\n  apiKey: {encoded}\n---\n"
            "apiVersion: parallax.ai/v1\nkind: Agent\nmetadata:\n  name: pxsc-applied\n"
            "spec:\n  type: claude\n  env:\n    ANTHROPIC_API_KEY:\n"
            "      secretKeyRef: {name: pxsc-anthropic, key: apiKey}\n"
        )

    async def apply(text: str, query: str = "") -> tuple[int, Any]:
        assert controller.session is not None
        headers = {"Content-Type": "application/yaml"}
        async with controller.session.post(controller.base_url + "/apply" + query, data=text, headers=headers) as resp:
            return resp.status, await resp.json()

    seen = []
    status, dry = await apply(documents(FIRST), "?dryRun=true")
    seen.append(json.dumps(dry))
    assert status == 200, dry
    assert [(r["kind"], r["outcome"]) for r in dry["results"]] == [("Secret", "created"), ("Agent", "created")]
    assert (await controller.request("GET", "/secrets/pxsc-anthropic"))[0] == 404  # a dry run writes nothing
    status, applied = await apply(documents(FIRST))
    seen.append(json.dumps(applied))
    assert status == 200, applied
    assert applied["results"][0]["secret"]["keys"] == {"apiKey": {"version": 1}}
    before = await controller.wait_agent("pxsc-applied", running, timeout=60)
    assert await _env_in_container("pxsc-applied", "ANTHROPIC_API_KEY") == FIRST
    status, again = await apply(documents(FIRST))
    assert [r["outcome"] for r in again["results"]] == ["unchanged", "unchanged"], again
    status, changed = await apply(documents(SECOND))
    seen.append(json.dumps(changed))
    assert [r["outcome"] for r in changed["results"]] == ["configured", "unchanged"], changed
    await controller.wait_agent(
        "pxsc-applied", lambda a: running(a) and a["status"]["containerId"] != before["status"]["containerId"], 60
    )
    assert await _env_in_container("pxsc-applied", "ANTHROPIC_API_KEY") == SECOND
    status, invalid = await apply(documents(FIRST).replace("name: pxsc-anthropic\n", "name: Not_Valid\n", 1))
    seen.append(json.dumps(invalid))
    assert status == 422, invalid
    assert "metadata.name" in json.dumps(invalid)
    assert (await controller.request("GET", "/secrets/pxsc-anthropic"))[1]["version"] == 2  # nothing applied
    text = "\n".join(seen)
    for value in (FIRST, SECOND, base64.b64encode(FIRST.encode()).decode(), base64.b64encode(SECOND.encode()).decode()):
        assert value not in text
