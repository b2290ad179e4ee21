"""A worker's dockerd SIGKILLed under a running agent: Swarm marks the node down, the controller makes the
agent's task again on the other worker, and the API shows it Pending then Running there, with an event.
The node is brought back afterwards, and the copy its containerd kept running is gone once it rejoins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.harness import running, wait_for
from tests.swarm import lab
from tests.swarm.test_swarm_runtime import events, task_container

pytestmark = pytest.mark.docker


async def test_agent_on_a_killed_node_runs_on_another(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    status, body = await controller.request("POST", "/agents", {"name": "sw-survivor", "type": "claude"})
    assert status == 201, body
    agent = await controller.wait_agent("sw-survivor", running, timeout=30)
    first = agent["status"]["node"]
    node, container = task_container(agent)
    phases: list[str] = []
    try:
        killed = time.monotonic()
        lab.kill_node(node)

        async def elsewhere() -> dict[str, Any] | None:
            found = await controller.agent("sw-survivor")
            assert found is not None
            if not phases or phases[-1] != found["status"].get("phase"):
                phases.append(found["status"].get("phase"))
            return found if running(found) and found["status"].get("node") != first else None

        agent = await wait_for(elsewhere, timeout=30, what="the agent running on another node")
        took = time.monotonic() - killed
        print(f"\nnode {first} killed: the agent ran on {agent['status']['node']} after {took:.2f} s")
        assert "Pending" in phases, phases
        assert agent["status"]["restartCount"] == 0  # the agent did not exit: not a restart
        assert any(e.startswith(f"NodeLost: node {first} is down") for e in await events(controller, "sw-survivor"))
    finally:
        result = await asyncio.to_thread(lab.up)
        assert result.returncode == 0, result.stderr

    # back: the node's dockerd learns its task was shut down and removes the copy that kept running
    async def copy_gone() -> bool:
        listed = await asyncio.to_thread(lab.cli, node, "ps", "-q", "--filter", f"id={container['Id']}")
        return listed.returncode == 0 and not listed.stdout.strip()

    await wait_for(copy_gone, timeout=30, what=f"the stale copy on {first} removed")
    agent = await controller.wait_agent("sw-survivor", running, timeout=5)
    assert agent["status"]["node"] != first
