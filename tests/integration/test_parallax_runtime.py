"""The Parallax control plane's runtime contract (issue 18), against a real server and real agents.

The expected shapes are written down from HaruHunab1320/parallax:
``packages/runtime-interface/src/types.ts`` (AgentHandle, AgentMetrics, RuntimeEvent) and
``packages/control-plane/src/agent-runtime/runtime-client.ts`` (what each call reads: ``{agents, count}``,
``{logs, count}``, ``{sent, response?}``, ``RuntimeHealthStatus``, frames ``{event, data, timestamp}``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from api.server.compat import COMPAT_PORT
from tests.conftest import StartController
from tests.harness import Controller, inspect, wait_for

# types.ts: interface AgentHandle
HANDLE_KEYS = {
    "id",
    "name",
    "type",
    "status",
    "endpoint",
    "pid",
    "containerId",
    "podName",
    "role",
    "capabilities",
    "startedAt",
    "lastActivityAt",
    "error",
    "exitCode",
}
HANDLE_REQUIRED = {"id", "name", "type", "status", "capabilities"}
# types.ts: type AgentStatus
STATUSES = {"pending", "starting", "authenticating", "ready", "busy", "stopping", "stopped", "error"}
# types.ts: interface AgentMetrics
METRICS_KEYS = {"cpu", "memory", "messageCount", "uptime", "lastResponseTime"}
# runtime-client.ts: interface RuntimeHealthStatus
HEALTH_KEYS = {"healthy", "message", "runtime"}
HEALTH_RUNTIME_KEYS = {"name", "type", "activeAgents"}
# runtime-client.ts handleMessage(msg: {event, data, timestamp}); types.ts RuntimeEvent
FRAME_KEYS = {"event", "data", "timestamp"}
EVENT_DATA_KEYS = {
    "agent_started": {"agent"},
    "agent_ready": {"agent"},
    "agent_stopped": {"agent", "reason"},
    "agent_error": {"agent", "error"},
    "login_required": {"agent", "loginUrl", "loginInstructions"},
}
# types.ts: interface AgentMessage
MESSAGE_KEYS = {"id", "agentId", "direction", "type", "content", "metadata", "timestamp"}
SECRET = "sk-cpt-" + uuid.uuid4().hex
ENTRYPOINT_DIR = Path(__file__).resolve().parents[2] / "images" / "base"


def check_handle(handle: Any) -> dict[str, Any]:
    assert isinstance(handle, dict), handle
    assert HANDLE_REQUIRED <= set(handle) <= HANDLE_KEYS, handle
    assert handle["status"] in STATUSES, handle
    assert isinstance(handle["capabilities"], list)
    return handle


class Client:
    """What the control plane's RuntimeClient does: JSON requests to a base URL, and one WebSocket."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self.seen_text: list[str] = []  # every answer and frame, to check no secret ever shows

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.base_url + path, data=data, headers=headers) as response:
            text = await response.text()
            self.seen_text.append(text)
            return response.status, (json.loads(text) if text else None)


class Frames:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, client: Client) -> None:
        self.ws = ws
        self.client = client
        self.received: list[dict[str, Any]] = []
        self.unclaimed: list[dict[str, Any]] = []

    async def next_for(self, agent_id: str, events: set[str], timeout: float = 30.0) -> dict[str, Any]:
        """The next frame about ``agent_id`` whose event is one of ``events`` (others are kept)."""
        for payload in self.unclaimed:  # a frame that came while waiting for another
            if self._about(payload) == agent_id and payload["event"] in events:
                self.unclaimed.remove(payload)
                return payload
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {events} frame for {agent_id}; got {[f['event'] for f in self.received]}"
            message = await self.ws.receive(timeout=remaining)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            self.client.seen_text.append(message.data)
            payload = json.loads(message.data)
            assert set(payload) == FRAME_KEYS, payload
            self.received.append(payload)
            if self._about(payload) == agent_id and payload["event"] in events:
                return payload
            self.unclaimed.append(payload)

    @staticmethod
    def _about(payload: dict[str, Any]) -> str | None:
        """The agent a frame is about, checking its data's shape (types.ts RuntimeEvent)."""
        data = payload["data"]
        if payload["event"] in EVENT_DATA_KEYS:
            assert {"agent"} <= set(data) <= EVENT_DATA_KEYS[payload["event"]], payload
            return str(check_handle(data["agent"])["id"])
        if payload["event"] == "message":
            assert set(data) == {"message"} and set(data["message"]) == MESSAGE_KEYS, payload
            return str(data["message"]["agentId"])
        return data.get("agentId")


def tag() -> str:
    return uuid.uuid4().hex[:6]


async def compat_client(controller: Controller) -> Client:
    assert controller.session is not None and controller.runner is not None
    return Client(controller.session, f"http://127.0.0.1:{controller.runner.app[COMPAT_PORT]}")


async def test_control_plane_spawns_messages_and_stops_an_agent_over_the_compat_port(
    start_controller: StartController, docker: aiodocker.Docker
):
    controller = await start_controller(compat_port=0)
    client = await compat_client(controller)
    assert controller.session is not None
    ws = await controller.session.ws_connect(client.base_url + "/ws")  # where the client looks: base URL + /ws
    frames = Frames(ws, client)

    async def healthy() -> bool:
        status, body = await client.call("GET", "/api/health")
        assert status == 200 and set(body) <= HEALTH_KEYS and set(body["runtime"]) == HEALTH_RUNTIME_KEYS
        return bool(body["healthy"])

    await wait_for(healthy, 15, "a healthy runtime")
    agent_id = f"cpt-life-{tag()}"
    execution = f"cpt-exec-{tag()}"
    config = {
        "id": agent_id,
        "name": "CPT Engineer 1",
        "type": "claude",
        "capabilities": ["code", "review"],
        "role": "engineer",
        "reportsTo": "cpt-lead",
        "executionId": execution,
        "env": {"CPT_PLAIN": "plain-value"},
        "credentials": {"anthropicKey": SECRET},
        "resources": {"cpu": "500m", "memory": "64Mi"},
        "autoRestart": True,
    }
    began = time.monotonic()
    status, created = await client.call("POST", "/api/agents", config)
    assert status == 201, created
    assert time.monotonic() - began < 5  # the client gives up after 30 s: recording is all this waits for
    assert check_handle(created)["status"] == "starting"
    assert (created["id"], created["name"], created["type"]) == (agent_id, "CPT Engineer 1", "claude")
    assert (created["role"], created["capabilities"]) == ("engineer", ["code", "review"])

    started = await frames.next_for(agent_id, {"agent_started", "agent_ready"})
    assert started["event"] == "agent_started"  # started, then ready: in the order they happened
    ready = await frames.next_for(agent_id, {"agent_ready"})
    assert ready["data"]["agent"]["status"] == "ready"

    status, handle = await client.call("GET", f"/api/agents/{agent_id}")
    assert status == 200 and check_handle(handle)["status"] == "ready"
    assert handle["containerId"] and handle["startedAt"]
    container = await inspect(docker, handle["containerId"])
    assert container is not None
    assert f"ANTHROPIC_API_KEY={SECRET}" in container["Config"]["Env"]
    assert container["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert container["HostConfig"]["NanoCpus"] == 500_000_000

    status, listed = await client.call("GET", "/api/agents?status=ready&status=starting&type=claude&role=engineer")
    assert status == 200 and set(listed) == {"agents", "count"} and listed["count"] == len(listed["agents"])
    assert [h["id"] for h in listed["agents"]] == [agent_id]
    status, listed = await client.call("GET", "/api/agents?status=stopped")
    assert status == 200 and listed == {"agents": [], "count": 0}

    # An ordinary Agent: seen through /agents with its labels, its env values redacted.
    status, record = await controller.request("GET", f"/agents/{agent_id}")
    assert status == 200
    assert record["metadata"]["labels"]["parallax.ai/execution-id"] == execution
    assert record["metadata"]["annotations"]["parallax.ai/reports-to"] == "cpt-lead"
    assert record["spec"]["env"]["ANTHROPIC_API_KEY"] == "<redacted>"
    assert record["spec"]["restartPolicy"] == "Always"

    status, sent = await client.call("POST", f"/api/agents/{agent_id}/send", {"message": "hello from cpt"})
    assert (status, sent) == (200, {"sent": True})
    await ws.send_json({"type": "send", "agentId": agent_id, "message": "over the socket"})
    result = await frames.next_for(agent_id, {"send_result"})
    assert result["data"]["sent"] is True

    async def logged() -> bool:
        status, body = await client.call("GET", f"/api/agents/{agent_id}/logs?tail=50")
        assert status == 200 and set(body) == {"logs", "count"} and body["count"] == len(body["logs"])
        return "received: hello from cpt" in body["logs"] and "received: over the socket" in body["logs"]

    await wait_for(logged, 15, "both messages in the agent's logs")

    status, usage = await client.call("GET", f"/api/agents/{agent_id}/metrics")
    assert status == 200 and set(usage) <= METRICS_KEYS, usage
    assert usage["memory"] > 0 and usage["uptime"] >= 0 and usage["cpu"] >= 0
    assert usage["messageCount"] == 2
    status, handle = await client.call("GET", f"/api/agents/{agent_id}")
    assert check_handle(handle)["lastActivityAt"]

    status, restarted = await client.call("POST", f"/api/agents/{agent_id}/restart")
    assert status == 200 and check_handle(restarted)["id"] == agent_id
    again = await frames.next_for(agent_id, {"agent_started"})
    assert again["data"]["agent"]["containerId"] != handle["containerId"]

    status, _ = await client.call("DELETE", f"/api/agents/{agent_id}?force=true")
    assert status == 204
    stopped = await frames.next_for(agent_id, {"agent_stopped"})
    assert stopped["data"]["reason"] == "deleted" and stopped["data"]["agent"]["status"] == "stopped"
    status, missing = await client.call("GET", f"/api/agents/{agent_id}")
    assert status == 404 and isinstance(missing["error"], str)
    assert await inspect(docker, again["data"]["agent"]["containerId"]) is None
    status, _ = await client.call("GET", f"/api/agents/{agent_id}/metrics")
    assert status == 404  # the client's null
    await ws.close()
    assert not any(SECRET in text for text in client.seen_text)


def entrypoint_agent(name: str, cli: str) -> dict[str, Any]:
    """An agent running the real agent images' entrypoint (images/base/parallax-agent) on the test image,
    with the CLI ``cli`` (``none``: it acknowledges each message; ``claude`` without a key: it needs
    credentials). Made through /agents: a command and volumes are more than an AgentConfig can carry."""
    return {
        "name": name,
        "type": "claude",
        "command": ["/bin/sh", "/opt/parallax/parallax-agent"],
        "env": {"PARALLAX_AGENT_CLI": cli},
        "volumes": [f"{ENTRYPOINT_DIR}:/opt/parallax:ro"],
    }


async def test_login_required_answers_and_agent_error_reach_the_socket(start_controller: StartController):
    controller = await start_controller(allowed_volume_roots=(str(ENTRYPOINT_DIR),))
    assert controller.session is not None
    client = Client(controller.session, controller.base_url)  # the main port: /api/ws
    ws = await controller.session.ws_connect(controller.base_url + "/api/ws")
    frames = Frames(ws, client)
    suffix = tag()
    needs, answers, crashes = f"cpt-login-{suffix}", f"cpt-answer-{suffix}", f"cpt-crash-{suffix}"
    for body in (
        entrypoint_agent(needs, "claude"),
        entrypoint_agent(answers, "none"),
        {"name": crashes, "type": "claude", "env": {"EXIT_AFTER": "0", "EXIT_CODE": "3"}},
    ):
        status, created = await controller.request("POST", "/agents", body)
        assert status == 201, created
    login = await frames.next_for(needs, {"login_required"})
    assert "ANTHROPIC_API_KEY" in login["data"]["loginInstructions"]
    assert login["data"]["agent"]["status"] == "authenticating"
    failed = await frames.next_for(crashes, {"agent_error"})
    assert failed["data"]["agent"]["status"] == "error" and failed["data"]["agent"]["exitCode"] == 3
    assert isinstance(failed["data"]["error"], str) and failed["data"]["error"]
    status, listed = await client.call("GET", "/api/agents?status=authenticating")
    assert [h["id"] for h in listed["agents"]] == [needs]

    await frames.next_for(answers, {"agent_ready"})
    status, sent = await client.call(
        "POST", f"/api/agents/{answers}/send", {"message": "line one\nline two", "expectResponse": True}
    )
    assert status == 200 and set(sent) == {"sent", "response"}, sent
    reply = sent["response"]
    assert set(reply) == MESSAGE_KEYS and reply["direction"] == "outbound" and reply["agentId"] == answers
    assert reply["type"] == "response" and "received a message (17 characters)" in reply["content"]
    event = await frames.next_for(answers, {"message"})  # every client gets it, not only subscribers
    assert event["data"]["message"]["id"] == reply["id"]
    status, sent = await client.call("POST", f"/api/agents/{needs}/send", {"message": "hi", "expectResponse": True})
    assert status == 200 and sent["response"]["type"] == "error"
    assert "was not delivered" in sent["response"]["content"]
    await frames.next_for(needs, {"message"})

    for name in (needs, answers, crashes):
        status, _ = await client.call("DELETE", f"/api/agents/{name}?timeout=1")
        assert status == 204
    await frames.next_for(needs, {"agent_stopped"})
    await ws.close()


async def test_an_execution_cleanup_stops_every_agent_of_it(start_controller: StartController):
    controller = await start_controller()
    assert controller.session is not None
    client = Client(controller.session, controller.base_url)
    execution, other = f"cpt-exec-{tag()}", f"cpt-exec-{tag()}"
    ids = []
    for i, exe in enumerate((execution, execution, other)):
        status, handle = await client.call(
            "POST", "/api/agents", {"name": f"CPT worker {i}", "type": "custom", "executionId": exe}
        )
        assert status == 201, handle
        assert handle["id"].startswith(f"cpt-worker-{i}-")  # made from the name: the config had no id
        ids.append(handle["id"])
    status, selected = await controller.request("GET", f"/agents?labelSelector=parallax.ai/execution-id={execution}")
    assert sorted(a["metadata"]["name"] for a in selected["items"]) == sorted(ids[:2])

    status, body = await client.call("DELETE", f"/api/executions/{execution}/resources")
    assert status == 202 and body == {"executionId": execution, "agents": sorted(ids[:2])}
    for agent_id in ids[:2]:
        await controller.wait_gone(agent_id, timeout=30)
    status, kept = await client.call("GET", f"/api/agents/{ids[2]}")
    assert status == 200 and kept["status"] != "stopping"
    status, body = await client.call("DELETE", f"/api/executions/{execution}/resources")
    assert (status, body) == (202, {"executionId": execution, "agents": []})
    status, _ = await client.call("DELETE", f"/api/agents/{ids[2]}")
    assert status == 204


@pytest.mark.parametrize("port", ["main"])
async def test_bad_requests_get_a_4xx_naming_the_field_never_a_secret(start_controller: StartController, port: str):
    controller = await start_controller(max_streams=1)
    assert controller.session is not None
    client = Client(controller.session, controller.base_url)
    good = {"name": "x", "type": "claude", "credentials": {"anthropicKey": SECRET}}
    cases: list[tuple[Any, int, str]] = [
        ({"type": "claude"}, 422, "name"),
        ({**good, "id": "Not_An_Id"}, 422, "id"),
        ({**good, "type": "robot"}, 422, "type"),
        ({**good, "resources": {"cpu": "lots"}}, 422, "resources.cpu"),
        ({**good, "resources": {"timeout": 0}}, 422, "resources.timeout"),
        ({**good, "idleTimeout": -5}, 422, "idleTimeout"),
        ({**good, "idleTimeout": 10**9}, 422, "idleTimeout"),
        ({**good, "workdir": "/src"}, 422, "workdir"),
        ({**good, "extra": 1}, 422, "extra"),
        ({**good, "credentials": {"anthropicKey": SECRET, "openaiKey": 7}}, 422, "credentials.openaiKey"),
        ({**good, "env": {"ANTHROPIC_API_KEY": "other"}}, 422, "credentials.anthropicKey"),
    ]
    for body, expected_status, field in cases:
        status, error = await client.call("POST", "/api/agents", body)
        assert status == expected_status, (body, error)
        assert isinstance(error["error"], str) and field in error["error"], error
        assert field in [d["field"] for d in error["details"]], error
    async with controller.session.post(
        controller.base_url + "/api/agents", data=json.dumps(good), headers={"Content-Type": "text/plain"}
    ) as response:
        assert response.status == 415
    async with controller.session.post(
        controller.base_url + "/api/agents", data="{nope", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
    for path, field in (
        ("/api/agents?status=asleep", "status"),
        ("/api/agents?type=robot", "type"),
        ("/api/agents?colour=blue", "colour"),
        ("/api/agents/cpt-none/logs?tail=lots", "tail"),
    ):
        status, error = await client.call("GET", path)
        assert status == 400 and error["details"][0]["field"] == field, (path, error)
    for method, path, body in (
        ("GET", "/api/agents/cpt-none", None),
        ("DELETE", "/api/agents/cpt-none", None),
        ("POST", "/api/agents/cpt-none/restart", None),
        ("POST", "/api/agents/cpt-none/send", {"message": "hi"}),
        ("GET", "/api/agents/cpt-none/metrics", None),
    ):
        status, error = await client.call(method, path, body)
        assert status == 404 and "cpt-none" in error["error"], (method, path, error)

    status, _ = await client.call("POST", "/api/agents", {**good, "id": "cpt-dup"})
    assert status == 201
    status, error = await client.call("POST", "/api/agents", {**good, "id": "cpt-dup"})
    assert status == 409 and error["details"][0]["field"] == "id"
    status, error = await client.call("POST", "/api/agents/cpt-dup/send", {"message": "hi", "expectResponse": "yes"})
    assert status == 422 and error["details"][0]["field"] == "expectResponse"
    status, error = await client.call("POST", "/api/agents/cpt-dup/send", {"text": "hi"})
    assert status == 422
    status, error = await client.call("DELETE", "/api/agents/cpt-dup?timeout=soon")
    assert status == 400 and error["details"][0]["field"] == "timeout"

    # The socket counts against PARALLAX_MAX_STREAMS and gives its place back when its client goes.
    first = await controller.session.ws_connect(controller.base_url + "/api/ws")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await controller.session.ws_connect(controller.base_url + "/api/ws")
    assert refused.value.status == 429
    await first.close()

    async def reopened() -> bool:
        try:
            ws = await controller.session.ws_connect(controller.base_url + "/api/ws")  # type: ignore[union-attr]
        except aiohttp.WSServerHandshakeError:
            return False
        await ws.send_json({"type": "send", "agentId": "cpt-none", "message": "hi"})
        answer = json.loads((await ws.receive(timeout=5)).data)
        assert answer["event"] == "send_result" and answer["data"]["sent"] is False
        assert "cpt-none" in answer["data"]["error"]
        await ws.close()
        return True

    await wait_for(reopened, 5, "the stream slot given back")
    # A browser page cannot drive the agents of a token-less API through the socket.
    with pytest.raises(aiohttp.WSServerHandshakeError) as cross_site:
        await controller.session.ws_connect(controller.base_url + "/api/ws", origin="https://evil.example")
    assert cross_site.value.status == 403
    status, _ = await client.call("DELETE", "/api/agents/cpt-dup?force=1")
    assert status == 204
    await asyncio.sleep(0)
    assert not any(SECRET in text for text in client.seen_text)
