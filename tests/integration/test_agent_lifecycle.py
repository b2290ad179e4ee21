"""``spec.paused`` and ``spec.lifecycle`` on the real Docker daemon: a frozen counter resumes where it
stopped; a deadline stops a real agent; an idle agent is suspended, keepalive holds it off, and a send
wakes it with its workspace intact. (The timers' arithmetic is tests/unit/test_lifecycle_timers.py.)"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from typing import Any

import aiodocker
import pytest

from controller.model.timestamps import parse_time
from tests.conftest import StartController
from tests.harness import Controller, docker_exec, inspect, running, wait_for

pytestmark = pytest.mark.docker

TICK = re.compile(r"^tick (\d+)$")


async def start(start_controller: StartController, tag: str | None = None, **settings: Any) -> Controller:
    """A controller with pxlc-named objects; the same ``tag`` again is the same controller restarted (its
    store, network and instance label)."""
    tag = tag or uuid.uuid4().hex[:8]
    return await start_controller(network=f"pxlc-{tag}", instance=f"pxlc-{tag}", **settings)


async def ticks(controller: Controller, name: str) -> list[int]:
    _, text = await controller.request("GET", f"/agents/{name}/logs?tail=all")
    return [int(m.group(1)) for line in str(text).splitlines() if (m := TICK.match(line))]


def phase(wanted: str) -> Any:
    return lambda agent: agent["status"].get("phase") == wanted


async def test_a_paused_agents_counter_resumes_where_it_stopped(
    start_controller: StartController, docker: aiodocker.Docker
) -> None:
    controller = await start(start_controller)
    name = "pxlc-pause"
    status, _ = await controller.request(
        "POST", "/agents", {"name": name, "type": "claude", "env": {"TICK_SECONDS": "1"}}
    )
    assert status == 201
    before = await controller.wait_agent(name, running)
    container = before["status"]["containerId"]
    await wait_for(lambda: _at_least(controller, name, 2), timeout=20, what="two ticks")

    code, out = await cli(controller, "pause", name)
    assert (code, out.strip()) == (0, f"agent/{name} paused")
    await controller.wait_agent(name, phase("Paused"), timeout=15)
    state = (await inspect(docker, container) or {})["State"]
    assert state["Paused"] is True and state["Running"] is True
    frozen = await ticks(controller, name)
    await wait_for(_seconds(3), timeout=5, what="3 s frozen")
    assert (await ticks(controller, name))[-1] <= frozen[-1] + 1, "a paused agent does not tick"

    code, out = await cli(controller, "unpause", name)
    assert (code, out.strip()) == (0, f"agent/{name} unpaused")
    after = await controller.wait_agent(name, running, timeout=15)
    await wait_for(lambda: _at_least(controller, name, frozen[-1] + 2), timeout=20, what="ticks after the thaw")
    counted = await ticks(controller, name)
    assert counted == list(range(1, len(counted) + 1)), "the counter went on from where it was: no restart"
    assert after["status"]["containerId"] == container
    assert after["status"].get("restartCount", 0) == 0
    _, events = await controller.request("GET", f"/agents/{name}/events")
    assert {"Paused", "Unpaused"} <= {e["reason"] for e in events["items"]}


async def test_a_real_agent_past_its_deadline_is_stopped_and_failed(start_controller: StartController) -> None:
    controller = await start(start_controller)
    name = "pxlc-deadline"
    body = {"name": name, "type": "claude", "lifecycle": {"activeDeadlineSeconds": 3}}
    assert (await controller.request("POST", "/agents", body))[0] == 201
    await controller.wait_agent(name, running)
    failed = await controller.wait_agent(name, phase("Failed"), timeout=20)
    assert failed["status"]["reason"] == "DeadlineExceeded"
    assert failed["status"]["finishedAt"]
    _, events = await controller.request("GET", f"/agents/{name}/events")
    assert "DeadlineExceeded" in {e["reason"] for e in events["items"]}
    await wait_for(_seconds(3), timeout=5, what="a resync")
    assert (await controller.agent(name) or {})["status"]["phase"] == "Failed", "not restarted"


async def test_the_deadline_holds_across_a_controller_restart(start_controller: StartController) -> None:
    tag = uuid.uuid4().hex[:8]
    first = await start(start_controller, tag)
    name = "pxlc-restarted"
    body = {"name": name, "type": "claude", "lifecycle": {"activeDeadlineSeconds": 6}}
    assert (await first.request("POST", "/agents", body))[0] == 201
    running_agent = await first.wait_agent(name, running)
    began = running_agent["status"]["activeSince"]
    await first.stop()  # the agent's container keeps running; no timer is left in any memory
    second = await start(start_controller, tag)
    adopted = await second.wait_agent(name, running)
    assert adopted["status"]["containerId"] == running_agent["status"]["containerId"], "adopted, not restarted"
    failed = await second.wait_agent(name, phase("Failed"), timeout=20)
    assert failed["status"]["reason"] == "DeadlineExceeded"
    assert failed["status"]["finishedAt"] >= began
    ended = parse_time(failed["status"]["finishedAt"]) - parse_time(began)
    assert 6 <= ended.total_seconds() < 12, f"the deadline counted from the stored start: {ended}"


async def test_a_finished_real_agent_is_deleted_after_its_ttl(
    start_controller: StartController, docker: aiodocker.Docker
) -> None:
    controller = await start(start_controller)
    name = "pxlc-ttl"
    body = {
        "name": name,
        "type": "claude",
        "restartPolicy": "Never",
        "env": {"EXIT_AFTER": "1"},
        "lifecycle": {"ttlSecondsAfterFinished": 2},
    }
    assert (await controller.request("POST", "/agents", body))[0] == 201
    finished = await controller.wait_agent(name, phase("Succeeded"), timeout=30)
    container = finished["status"]["containerId"]
    await controller.wait_gone(name, timeout=20)
    assert await inspect(docker, container) is None, "its container went with it"
    _, events = await controller.request("GET", f"/agents/{name}/events")
    assert "TTLExpired" in {e["reason"] for e in events["items"]}


async def test_idle_suspends_keepalive_holds_it_off_and_a_send_wakes_it_with_its_workspace(
    start_controller: StartController,
) -> None:
    controller = await start(start_controller, activity_write_seconds=0.5)
    name = "pxlc-idle"
    lifecycle = {"idleTimeoutSeconds": 4, "resumeOnActivity": True}
    assert (await controller.request("POST", "/agents", {"name": name, "type": "claude", "lifecycle": lifecycle}))[
        0
    ] == 201
    agent = await controller.wait_agent(name, running)
    code, _ = await docker_exec(agent["status"]["containerId"], "sh", "-c", "echo kept > /workspace/note")
    assert code == 0

    for _ in range(7):  # 7 s of keepalives: longer than the idle timeout
        status, answer = await controller.request("POST", f"/agents/{name}/keepalive")
        assert status == 200 and answer["lastActivityTime"] and answer["idleAt"]
        await wait_for(_seconds(1), timeout=3, what="a second")
    code, out = await cli(controller, "keepalive", name)
    assert code == 0 and out.startswith(f"agent/{name} active at "), out
    assert (await controller.agent(name) or {})["status"]["phase"] == "Running"

    suspended = await controller.wait_agent(name, phase("Suspended"), timeout=20)
    assert suspended["spec"]["suspend"] is True
    _, events = await controller.request("GET", f"/agents/{name}/events")
    assert "IdleSuspended" in {e["reason"] for e in events["items"]}

    status, sent = await controller.request("POST", f"/agents/{name}/send", {"message": "wake up"})
    assert status == 202, sent
    woken = await controller.agent(name) or {}
    assert woken["spec"]["suspend"] is False and woken["status"]["phase"] == "Running"
    code, out = await docker_exec(woken["status"]["containerId"], "cat", "/workspace/note")
    assert (code, out.strip()) == (0, "kept"), "the workspace volume was kept and mounted again"
    assert (await controller.request("POST", "/agents/pxlc-nobody/keepalive"))[0] == 404


async def cli(controller: Controller, *argv: str) -> tuple[int, str]:
    """The ``parallax`` client command against the test controller."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "api.cli.main",
        argv[0],
        "--server",
        controller.base_url,
        *argv[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def _at_least(controller: Controller, name: str, count: int) -> bool:
    seen = await ticks(controller, name)
    return bool(seen) and seen[-1] >= count


def _seconds(seconds: float) -> Any:
    import time

    until = time.monotonic() + seconds

    async def passed() -> bool:
        return time.monotonic() >= until

    return passed
