"""Bad input gets its status code and a message naming the field; nothing stored changes."""

from __future__ import annotations

import pytest

from tests.harness import Controller

pytestmark = pytest.mark.docker


async def _snapshot(controller: Controller) -> list[dict]:
    _, body = await controller.request("GET", "/agents")
    return [(a["metadata"], a["spec"]) for a in body["items"]]


async def test_malformed_json_is_400(controller: Controller):
    status, body = await controller.request("POST", "/agents", raw='{"name": "x", ')
    assert status == 400
    assert body["error"]["code"] == "MALFORMED_JSON"
    assert "line 1" in body["error"]["message"]
    assert await _snapshot(controller) == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "ok", "type": "claude", "colour": "blue"}, "colour"),
        ({"name": "ok", "type": "claude", "resources": {"memory": "lots"}}, "resources.memory"),
        ({"name": "ok", "type": "claude", "resources": {"memory": "-1g"}}, "resources.memory"),
        ({"name": "ok", "type": "claude", "resources": {"cpu": 0}}, "resources.cpu"),
        ({"name": "ok", "type": "claude", "resources": {"cpu": "fast"}}, "resources.cpu"),
        ({"name": "ok", "type": 7}, "type"),
        ({"name": "ok", "type": "claude", "env": {"A": 1}}, "env.A"),
        ({"name": "Not_A_Name", "type": "claude"}, "name"),
        ({"name": "x" * 64, "type": "claude"}, "name"),
        ({"name": "ok"}, "type"),
        ({"name": "ok", "type": "claude", "restartPolicy": "Sometimes"}, "restartPolicy"),
        ({"name": "ok", "type": "claude", "volumes": ["relative:/x"]}, "volumes[0]"),
        (
            {
                "apiVersion": "parallax.ai/v1",
                "kind": "Agent",
                "metadata": {"name": "ok"},
                "spec": {"type": "claude", "x": 1},
            },
            "spec.x",
        ),
    ],
)
async def test_invalid_agent_is_422_naming_the_field(controller: Controller, payload: dict, field: str):
    status, body = await controller.request("POST", "/agents", payload)
    assert status == 422, body
    assert body["error"]["code"] == "VALIDATION_FAILED"
    assert field in [d["field"] for d in body["error"]["details"]]
    assert await _snapshot(controller) == []


async def test_forbidden_mount_is_403(controller: Controller):
    status, body = await controller.request(
        "POST", "/agents", {"name": "ok", "type": "claude", "volumes": ["/var/run/docker.sock:/sock"]}
    )
    assert status == 403
    assert body["error"]["details"][0]["field"] == "volumes[0]"


async def test_duplicate_name_is_409_and_keeps_the_first(controller: Controller):
    status, first = await controller.request("POST", "/agents", {"name": "dup", "type": "claude", "env": {"K": "v1"}})
    assert status == 201
    status, body = await controller.request("POST", "/agents", {"name": "dup", "type": "codex"})
    assert status == 409
    assert body["error"]["code"] == "ALREADY_EXISTS"
    assert "dup" in body["error"]["message"]
    _, current = await controller.request("GET", "/agents/dup")
    assert current["spec"]["type"] == "claude"
    assert current["metadata"]["uid"] == first["metadata"]["uid"]


async def test_stale_resource_version_is_409(controller: Controller):
    _, created = await controller.request("POST", "/agents", {"name": "cas", "type": "claude"})
    rv = created["metadata"]["resourceVersion"]
    manifest = {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": "cas", "resourceVersion": rv},
        "spec": {"type": "claude", "resources": {"memory": "128m"}},
    }
    _, current = await controller.request("GET", "/agents/cas")
    if current["metadata"]["resourceVersion"] == rv:  # make it stale with a label change
        status, _ = await controller.request("PATCH", "/agents/cas", {"metadata": {"labels": {"touched": "yes"}}})
        assert status == 200
    before = await controller.agent("cas")
    status, body = await controller.request("PUT", "/agents/cas", manifest)
    assert status == 409
    assert body["error"]["code"] == "CONFLICT"
    assert "resourceVersion" in body["error"]["message"]
    after = await controller.agent("cas")
    assert after is not None and before is not None
    assert after["spec"] == before["spec"] and after["metadata"]["generation"] == before["metadata"]["generation"]
    manifest["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"]
    status, body = await controller.request("PUT", "/agents/cas", manifest)
    assert status == 200, body
    assert body["spec"]["resources"]["memory"] == "128m"


async def test_put_with_redacted_secrets_keeps_them(controller: Controller):
    await controller.request("POST", "/agents", {"name": "keeper", "type": "claude", "env": {"TOKEN": "s3cret"}})
    _, current = await controller.request("GET", "/agents/keeper")
    assert current["spec"]["env"] == {"TOKEN": "<redacted>"}
    current["metadata"] = {"name": "keeper", "labels": {"changed": "yes"}}
    current.pop("status")
    status, body = await controller.request("PUT", "/agents/keeper", current)
    assert status == 200, body
    assert body["metadata"]["generation"] == 1  # the secret was not replaced by the placeholder


async def test_unknown_agent_is_404_and_unknown_route_is_json(controller: Controller):
    status, body = await controller.request("GET", "/agents/nobody")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = await controller.request("DELETE", "/agents/nobody")
    assert status == 404
    status, body = await controller.request("GET", "/nowhere")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_oversized_body_is_413(controller: Controller):
    big = {"name": "big", "type": "claude", "env": {"X": "a" * (controller.settings.max_body_bytes + 10)}}
    status, body = await controller.request("POST", "/agents", big)
    assert status == 413
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_health_and_readiness(controller: Controller):
    status, body = await controller.request("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body = await controller.request("GET", "/readyz")
    assert status == 200, body
    assert body["checks"]["docker"]["ok"] and body["checks"]["store"]["ok"]
