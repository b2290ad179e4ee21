"""``spec.paused`` on a real swarm: Swarm cannot pause a task, so the runtime pauses the task's container
through its node's Docker endpoint (``PARALLAX_SWARM_NODES``); the counter resumes where it stopped."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from tests.harness import Controller, running, wait_for
from tests.swarm import lab

pytestmark = pytest.mark.docker

TICK = re.compile(r"^tick (\d+)$")


async def ticks(controller: Controller, name: str) -> list[int]:
    _, text = await controller.request("GET", f"/agents/{name}/logs?tail=all")
    return [int(m.group(1)) for line in str(text).splitlines() if (m := TICK.match(line))]


def container_state(agent: dict[str, Any]) -> dict[str, Any]:
    node = lab.node_of(agent["status"]["node"])
    listed = lab.cli(node, "ps", "-q", "--filter", f"label=parallax.agent={agent['metadata']['name']}")
    (container,) = listed.stdout.split()
    return dict(json.loads(lab.cli(node, "inspect", container).stdout)[0]["State"])


async def test_a_paused_swarm_agent_is_frozen_on_its_node_and_resumes_where_it_stopped(
    start_swarm_controller: Any,
) -> None:
    controller = await start_swarm_controller()
    name = f"pxlc-sw-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "type": "claude", "env": {"TICK_SECONDS": "1"}}
    assert (await controller.request("POST", "/agents", body))[0] == 201
    agent = await controller.wait_agent(name, running, timeout=60)
    service = agent["status"]["containerId"]

    async def ticked(count: int) -> bool:
        seen = await ticks(controller, name)
        return bool(seen) and seen[-1] >= count

    await wait_for(lambda: ticked(2), timeout=30, what="two ticks")
    assert (await controller.request("PATCH", f"/agents/{name}", {"paused": True}))[0] == 200
    paused = await controller.wait_agent(name, lambda a: a["status"].get("phase") == "Paused", timeout=30)
    assert container_state(paused)["Paused"] is True
    frozen = (await ticks(controller, name))[-1]

    assert (await controller.request("PATCH", f"/agents/{name}", {"paused": False}))[0] == 200
    thawed = await controller.wait_agent(name, running, timeout=30)
    assert container_state(thawed)["Paused"] is False
    await wait_for(lambda: ticked(frozen + 2), timeout=30, what="ticks after the thaw")
    counted = await ticks(controller, name)
    assert counted == list(range(1, len(counted) + 1)), "the counter went on: the task was not replaced"
    assert thawed["status"]["containerId"] == service and thawed["status"].get("restartCount", 0) == 0
