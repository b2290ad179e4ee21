"""Values Docker (or the kernel) cannot use are refused at admission with 422 naming the field, through
``POST /agents`` (flat body) and ``POST /apply`` (manifest); before, each was admitted with 201 and left
an agent that never ran. Values Docker can use after all (``pids: 512.0``) are admitted and run, and a
CPU limit above what the Docker host has is reported on the agent as RESOURCE_LIMIT naming the field.
"""

from __future__ import annotations

import json
from typing import Any

import aiodocker
import pytest

from controller.admission.schema import flat_to_manifest, load_schema
from tests.harness import Controller, docker_exec, running

pytestmark = pytest.mark.docker

SECRET = "sk-admission-secret-value"
EMOJI = "\U0001f600"  # four bytes in UTF-8, one character for maxLength

# (flat body fields, the field reported for the flat body); the manifest's field is the same under spec./metadata.
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("env-value-nul", {"env": {"API_KEY": SECRET + "\x00tail"}}, "env.API_KEY"),
    ("env-key-with-equals", {"env": {"A=B": "x"}}, "env"),
    ("env-key-empty", {"env": {"": "x"}}, "env"),
    ("env-key-newline", {"env": {"KEY\n": "x"}}, "env"),
    ("env-value-lone-surrogate", {"env": {"K": "abc\ud800"}}, "env.K"),
    ("env-entry-over-128-kib", {"env": {"K": EMOJI * 32768}}, "env.K"),
    ("command-nul", {"command": ["sh\x00x", "-c", "true"]}, "command[0]"),
    ("command-empty-program", {"command": ["", "x"]}, "command[0]"),
    ("args-nul", {"args": ["ok", "a\x00b"]}, "args[1]"),
    ("memory-overflows-int64", {"resources": {"memory": "99999999999999999999999g"}}, "resources.memory"),
    ("memory-bytes-overflow-int64", {"resources": {"memory": 10**19}}, "resources.memory"),
    ("cpu-nanocpus-overflow-int64", {"resources": {"cpu": 1e10}}, "resources.cpu"),
    ("cpu-string-overflow", {"resources": {"cpu": "99999999999"}}, "resources.cpu"),
    ("image-double-colon", {"image": "a::b"}, "image"),
    ("image-bad-digest", {"image": "a@sha256:zz"}, "image"),
    ("image-short-digest", {"image": "busybox@sha256:" + "a" * 63}, "image"),
    ("image-upper-case", {"image": "Busybox:latest"}, "image"),
    ("image-trailing-newline", {"image": "busybox\n"}, "image"),
    ("image-long-tag", {"image": "busybox:" + "t" * 129}, "image"),
    ("image-long-name", {"image": "a" * 256}, "image"),
    ("name-trailing-newline", {"name": "adm-newline\n"}, "name"),
    ("label-key-double-dot", {"labels": {"a..b/c": "x"}}, "labels"),
    ("label-key-name-over-63", {"labels": {"x" * 64: "v"}}, "labels"),
    ("label-key-prefix-over-253", {"labels": {"a." * 127 + "a/b": "v"}}, "labels"),
    ("label-value-newline", {"labels": {"team": "research\n"}}, "labels.team"),
    ("annotation-key-space", {"annotations": {"bad key": "v"}}, "annotations"),
    ("annotation-value-nul", {"annotations": {"note": "a\x00b"}}, "annotations.note"),
    # Bounds that held before too, kept here so every bound of the schema has a test through the API.
    ("memory-below-docker-minimum", {"resources": {"memory": "5m"}}, "resources.memory"),
    ("pids-over-maximum", {"resources": {"pids": 1048577}}, "resources.pids"),
    ("grace-negative", {"stopGracePeriodSeconds": -1}, "stopGracePeriodSeconds"),
    ("grace-over-an-hour", {"stopGracePeriodSeconds": 3601}, "stopGracePeriodSeconds"),
]


def _manifest_field(field: str) -> str:
    head = field.split(".")[0].split("[")[0]
    return ("metadata." if head in ("name", "labels", "annotations") else "spec.") + field


def _fields(body: Any) -> set[str]:
    return {d["field"] for d in body["error"]["details"]}


@pytest.mark.parametrize(("case", "fields", "field"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_a_value_docker_cannot_use_is_refused_with_422_naming_the_field(
    controller: Controller, case: str, fields: dict[str, Any], field: str
) -> None:
    name = "adm-" + case[:40].rstrip("-")
    body = {"name": name, "type": "claude", "suspend": True, **fields}
    status, answer = await controller.request("POST", "/agents", raw=json.dumps(body))
    assert status == 422, answer
    assert field in _fields(answer), answer
    assert SECRET not in json.dumps(answer)

    manifest = flat_to_manifest(body)
    status, answer = await controller.request("POST", "/apply", raw=json.dumps([manifest]))
    assert status == 422, answer
    assert _manifest_field(field) in _fields(answer), answer
    assert SECRET not in json.dumps(answer)
    assert await controller.agent(name.strip()) is None


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("metadata: {name: adm-yaml-int, labels: {1: a}}\nspec: {type: claude, suspend: true}\n", "metadata.labels.1"),
        ("metadata: {name: adm-yaml-null, annotations: {null: a}}\nspec: {type: codex}\n", "metadata.annotations.null"),
        ("metadata: {name: adm-yaml-env}\nspec: {type: claude, env: {3: x}}\n", "spec.env.3"),
    ],
    ids=["label-int-key", "annotation-null-key", "env-int-key"],
)
async def test_a_yaml_key_that_is_not_a_string_is_refused_not_coerced(
    controller: Controller, yaml_text: str, field: str
) -> None:
    assert controller.session is not None
    text = "apiVersion: parallax.ai/v1\nkind: Agent\n" + yaml_text
    async with controller.session.post(
        controller.base_url + "/apply", data=text.encode(), headers={"Content-Type": "application/yaml"}
    ) as resp:
        status, answer = resp.status, await resp.json()
    assert status == 422, answer
    assert field in _fields(answer), answer
    assert "quotes" in " ".join(d["message"] for d in answer["error"]["details"])


async def test_whole_numbers_written_with_a_fraction_are_admitted_and_the_agent_runs(
    controller: Controller, docker: aiodocker.Docker
) -> None:
    """``512.0`` is the integer 512 in JSON; Docker's Go types refuse ``512.0`` for an int64."""
    body = {
        "name": "adm-floats",
        "type": "claude",
        "resources": {"pids": 512.0, "memory": 67108864.0},
        "stopGracePeriodSeconds": 2.0,
    }
    status, created = await controller.request("POST", "/agents?wait=true&timeout=45", body)
    assert status == 201, created
    assert created["spec"]["resources"]["pids"] == 512 and created["spec"]["stopGracePeriodSeconds"] == 2
    agent = await controller.wait_agent("adm-floats", running, timeout=45)
    info = await (await docker.containers.get(agent["status"]["containerId"])).show()
    assert info["HostConfig"]["PidsLimit"] == 512 and info["HostConfig"]["Memory"] == 67108864


async def test_more_cpus_than_the_docker_host_has_is_admitted_and_reported_as_resource_limit(
    controller: Controller, docker: aiodocker.Docker
) -> None:
    """The decision: admitted (the API does not ask Docker, which may be remote, down, or another host
    later); the agent reports RESOURCE_LIMIT naming spec.resources.cpu with Docker's word on the host."""
    cpus = int((await docker.system.info())["NCPU"])
    body = {"name": "adm-cpus", "type": "claude", "resources": {"cpu": cpus + 1}}
    status, created = await controller.request("POST", "/agents?wait=true&timeout=30", body)
    assert status == 201, created
    agent = await controller.wait_agent("adm-cpus", lambda a: bool(a["status"].get("error")), timeout=30)
    error = agent["status"]["error"]
    assert error["code"] == "RESOURCE_LIMIT", error
    assert "spec.resources.cpu" in error["message"] and f"only {cpus} CPUs" in error["message"], error


async def test_capabilities_added_do_not_reach_the_non_root_agent_process(controller: Controller) -> None:
    """As the schema says (and as in Kubernetes): ``capabilities.add`` puts a capability in the bounding
    set; a non-root process gets none in its effective set without file capabilities or ambient ones."""
    description = load_schema()["$defs"]["spec"]["properties"]["securityContext"]["properties"]["capabilities"]
    assert "non-root" in description["properties"]["add"]["description"]
    body = {
        "name": "adm-caps",
        "type": "claude",
        "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"]}},
    }
    status, created = await controller.request("POST", "/agents?wait=true&timeout=45", body)
    assert status == 201 and running(created), created
    code, out = await docker_exec("parallax-agent-adm-caps", "sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status")
    assert code == 0, out
    caps = dict(line.split(":\t") for line in out.strip().splitlines())
    assert int(caps["CapBnd"], 16) == (1 << 10) | (1 << 0), caps  # NET_BIND_SERVICE (10) and CHOWN (0)
    assert int(caps["CapEff"], 16) == 0, caps
