"""Live operations against a real daemon: logs, metrics, restart, send, events, watch and resume."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiodocker
import aiohttp
import pytest

from tests.harness import Controller, docker_cli, inspect, running, wait_for

pytestmark = pytest.mark.docker


async def _ticker(controller: Controller, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "type": "claude", "env": {"TICK_SECONDS": "1"}, **extra}
    status, created = await controller.request("POST", "/agents", body)
    assert status == 201, created
    return await controller.wait_agent(name, running)


async def test_follow_streams_new_lines_and_ends_when_the_container_stops(controller: Controller):
    await _ticker(controller, "live-follow")
    assert controller.session is not None
    seen: list[str] = []
    url = f"{controller.base_url}/agents/live-follow/logs?follow=true&tail=all"
    async with controller.session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        stopped = False
        async with asyncio.timeout(30):
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                seen.append(line)
                if line == "tick 2" and not stopped:
                    stopped = True
                    status, _ = await controller.request("PATCH", "/agents/live-follow", {"suspend": True})
                    assert status == 200
        # the loop ended by itself: the stream closed when the container stopped
    assert "agent live-follow started" in seen
    assert "agent live-follow stderr ready" in seen
    assert "tick 1" in seen and "tick 2" in seen
    assert "agent stopping" in seen
    assert all("\x00" not in line and "\x01" not in line for line in seen), "frame headers leaked"


async def test_logs_tail_and_client_leaving_a_follow(controller: Controller):
    await _ticker(controller, "live-tail")
    await controller.wait_agent("live-tail", running)

    async def three_ticks() -> bool:
        _, text = await controller.request("GET", "/agents/live-tail/logs?tail=all")
        return "tick 3" in text

    await wait_for(three_ticks, timeout=20, what="three ticks")
    status, text = await controller.request("GET", "/agents/live-tail/logs?tail=2")
    assert status == 200
    assert len(text.strip().splitlines()) == 2
    status, body = await controller.request("GET", "/agents/live-tail/logs?tail=lots")
    assert status == 400 and body["error"]["code"] == "BAD_REQUEST"
    assert controller.session is not None
    async with controller.session.get(f"{controller.base_url}/agents/live-tail/logs?follow=true") as resp:
        await resp.content.readline()
    # the server survives a client that left mid-stream
    status, _ = await controller.request("GET", "/agents/live-tail")
    assert status == 200


async def test_metrics_of_a_running_agent_answer_without_a_second_sample(controller: Controller):
    await _ticker(controller, "live-metrics", resources={"memory": "96m", "cpu": 0.5})
    timings = []
    body: dict[str, Any] = {}
    for _ in range(3):
        started = time.perf_counter()
        status, body = await controller.request("GET", "/agents/live-metrics/metrics")
        timings.append(time.perf_counter() - started)
        assert status == 200, body
    print(f"metrics request times: {[round(t, 3) for t in timings]}")
    assert max(timings) < 1.0, f"a stats call that waits for a second sample costs 1-2 s: {timings}"
    assert body["memoryLimitBytes"] == 96 * 1024**2
    assert 0 < body["memoryBytes"] < body["memoryLimitBytes"]
    assert body["pids"] >= 1
    assert body["uptimeSeconds"] > 0
    assert body["cpuPercent"] >= 0
    assert body["restartCount"] == 0
    assert {"networkRxBytes", "networkTxBytes", "cpuSeconds"} <= set(body)


async def test_restart_recreates_the_container(controller: Controller, docker: aiodocker.Docker):
    before = await _ticker(controller, "live-restart")
    status, body = await controller.request("POST", "/agents/live-restart/restart")
    assert status == 202, body
    assert "parallax.ai/restartedAt" in body["metadata"]["annotations"]
    after = await controller.wait_agent(
        "live-restart", lambda a: running(a) and a["status"]["containerId"] != before["status"]["containerId"]
    )
    assert await inspect(docker, before["status"]["containerId"]) is None
    info = await inspect(docker, "parallax-agent-live-restart")
    assert info is not None and info["Id"] == after["status"]["containerId"]
    _, events = await controller.request("GET", "/agents/live-restart/events")
    assert "Recreating" in [e["reason"] for e in events["items"]]


async def test_send_delivers_a_multi_line_message_with_shell_metacharacters_verbatim(controller: Controller):
    await _ticker(controller, "live-send")
    message = "run $(id) and `whoami`; echo \"quoted\" 'single' | cat > /tmp/x && $HOME\nsecond line \\n ${PATH}"
    status, body = await controller.request("POST", "/agents/live-send/send", {"message": message})
    assert status == 202, body

    async def delivered() -> bool:
        _, text = await controller.request("GET", "/agents/live-send/logs?tail=all")
        return f"received: {message}\n" in text

    await wait_for(delivered, timeout=15, what="the message in the agent's output")
    _, text = await controller.request("GET", "/agents/live-send/logs?tail=all")
    assert text.count("received: ") == 1, "the two lines arrived as one message"
    assert "uid=" not in text, "the message was run by a shell"


async def test_send_to_an_agent_that_is_not_running_is_409(controller: Controller):
    await controller.request(
        "POST",
        "/agents",
        {"name": "live-done", "type": "claude", "restartPolicy": "Never", "env": {"EXIT_AFTER": "0"}},
    )
    await controller.wait_agent("live-done", lambda a: a["status"].get("phase") == "Succeeded")
    status, body = await controller.request("POST", "/agents/live-done/send", {"message": "hi"})
    assert status == 409 and body["error"]["code"] == "NOT_RUNNING"
    status, body = await controller.request("POST", "/agents/live-done/send", {"text": "hi"})
    assert status == 422 and body["error"]["details"][0]["field"] == "message"


async def test_events_tell_the_agents_story(controller: Controller):
    await _ticker(controller, "live-story")
    code, out = await docker_cli("kill", "parallax-agent-live-story")
    assert code == 0, out
    await controller.wait_agent("live-story", lambda a: running(a) and a["status"]["restartCount"] == 1)
    _, body = await controller.request("GET", "/agents/live-story/events")
    reasons = [e["reason"] for e in body["items"]]
    assert reasons[:2] == ["Created", "Started"]
    assert "Exited" in reasons and "Restarted" in reasons
    exited = next(e for e in body["items"] if e["reason"] == "Exited")
    assert exited["type"] == "Warning" and "137" in exited["message"]
    versions = [int(e["metadata"]["resourceVersion"]) for e in body["items"]]
    assert versions == sorted(versions)


async def _read_sse(resp: aiohttp.ClientResponse, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Read ``count`` events (not comments) from an SSE response."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while len(events) < count:
            raw = await resp.content.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\n")
            if line == "":
                if current:
                    events.append(current)
                current = {}
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value
    return events


async def test_watch_resumes_from_last_event_id_without_a_gap(controller: Controller):
    assert controller.session is not None
    url = f"{controller.base_url}/events?labelSelector=suite%3Dwatch"
    async with controller.session.get(url) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        (bookmark,) = await _read_sse(resp, 1)
        assert bookmark["event"] == "BOOKMARK"
        await controller.request("POST", "/agents", {"name": "watch-a", "type": "claude", "labels": {"suite": "watch"}})
        first = await _read_sse(resp, 1)
    assert first[0]["event"] == "ADDED" and first[0]["data"]["object"]["metadata"]["name"] == "watch-a"
    last_seen = first[0]["id"]

    # While disconnected: one more agent, a change, a deletion (and the controller's own updates and events).
    await controller.request("POST", "/agents", {"name": "watch-b", "type": "claude", "labels": {"suite": "watch"}})
    await controller.request("PATCH", "/agents/watch-a", {"metadata": {"labels": {"suite": "watch", "v": "2"}}})
    await controller.wait_agent("watch-b", running)
    await controller.request("DELETE", "/agents/watch-b")
    await controller.wait_gone("watch-b")
    await controller.request("POST", "/agents", {"name": "watch-other", "type": "claude"})  # filtered out

    _, a = await controller.request("GET", "/agents/watch-a")
    now = int(a["metadata"]["resourceVersion"])
    async with controller.session.get(url, headers={"Last-Event-ID": last_seen}) as resp:
        missed: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            while not any(e["event"] == "DELETED" for e in missed):
                missed += await _read_sse(resp, 1)
    ids = [int(e["id"]) for e in missed]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert min(ids) > int(last_seen)
    names = {
        e["data"]["object"].get("metadata", {}).get("name") or e["data"]["object"]["involvedObject"]["name"]
        for e in missed
    }
    assert names <= {"watch-a", "watch-b"}
    kinds = [(e["event"], (e["data"]["object"].get("metadata") or {}).get("name")) for e in missed]
    assert ("ADDED", "watch-b") in kinds
    assert ("DELETED", "watch-b") in kinds
    modified_a = [
        e for e in missed if e["event"] == "MODIFIED" and e["data"]["object"]["metadata"]["name"] == "watch-a"
    ]
    assert any(e["data"]["object"]["metadata"]["labels"].get("v") == "2" for e in modified_a)
    assert any(e["event"] == "EVENT" for e in missed)
    assert now >= 0


async def test_watch_from_a_version_that_is_too_old_says_relist(start_controller):
    first = await start_controller()
    await first.request("POST", "/agents", {"name": "watch-old", "type": "claude"})
    await first.wait_agent("watch-old", running)
    await first.stop()
    second = await start_controller()  # a new process: its history starts now
    assert second.session is not None
    async with second.session.get(f"{second.base_url}/events", headers={"Last-Event-ID": "1"}) as resp:
        (error,) = await _read_sse(resp, 1)
    assert error["event"] == "ERROR"
    assert error["data"]["object"]["code"] == 410
    assert "re-list" in error["data"]["object"]["message"]


async def test_list_then_watch_starts_with_the_current_agents(controller: Controller):
    await controller.request("POST", "/agents", {"name": "watch-list", "type": "claude"})
    assert controller.session is not None
    async with controller.session.get(f"{controller.base_url}/agents?watch=true&name=watch-list") as resp:
        added, bookmark = await _read_sse(resp, 2)
        assert added["event"] == "ADDED" and added["data"]["object"]["metadata"]["name"] == "watch-list"
        assert bookmark["event"] == "BOOKMARK"
        await controller.request("PATCH", "/agents/watch-list", {"suspend": True})
        (modified,) = await _read_sse(resp, 1)
        assert modified["event"] == "MODIFIED"
        assert int(modified["id"]) > int(bookmark["id"])


async def test_websocket_watch_receives_changes(controller: Controller):
    assert controller.session is not None
    async with controller.session.ws_connect(f"{controller.base_url}/ws?name=watch-ws") as ws:
        bookmark = await ws.receive_json(timeout=10)
        assert bookmark["type"] == "BOOKMARK"
        await controller.request("POST", "/agents", {"name": "watch-ws", "type": "claude"})
        message = await ws.receive_json(timeout=10)
        assert message["type"] == "ADDED"
        assert message["object"]["metadata"]["name"] == "watch-ws"
        assert int(message["resourceVersion"]) > int(bookmark["resourceVersion"])
