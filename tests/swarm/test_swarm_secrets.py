"""Secret references on the swarm runtime (tests/swarm/lab.py): resolved by the controller like on the
local runtime, so the task's container gets the value, and a changed secret rolls the service."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness import running, wait_for
from tests.swarm import lab
from tests.swarm.test_swarm_runtime import task_container

pytestmark = pytest.mark.docker

FIRST = "sk-swarm-first-18c2be90"
SECOND = "sk-swarm-second-7a4410fd"


def _env(agent: dict[str, Any]) -> list[str]:
    _, container = task_container(agent)
    return list(container["Config"]["Env"])


async def test_a_secret_reference_reaches_the_task_and_a_changed_secret_rolls_the_service(
    start_swarm_controller: Any,
) -> None:
    controller = await start_swarm_controller()
    status, body = await controller.request(
        "POST", "/secrets", {"metadata": {"name": "pxsc-swarm"}, "stringData": {"apiKey": FIRST}}
    )
    assert status == 201, body
    ref = {"secretKeyRef": {"name": "pxsc-swarm", "key": "apiKey"}}
    status, body = await controller.request(
        "POST", "/agents", {"name": "pxsc-sw", "type": "claude", "env": {"ANTHROPIC_API_KEY": ref}}
    )
    assert status == 201, body
    before = await controller.wait_agent("pxsc-sw", running, timeout=60)
    assert f"ANTHROPIC_API_KEY={FIRST}" in _env(before)
    status, body = await controller.request(
        "PUT", "/secrets/pxsc-swarm", {"metadata": {"name": "pxsc-swarm"}, "stringData": {"apiKey": SECOND}}
    )
    assert status == 200, body

    async def rolled() -> bool:
        agent = await controller.agent("pxsc-sw")
        if agent is None or not running(agent):
            return False
        try:
            return f"ANTHROPIC_API_KEY={SECOND}" in _env(agent)
        except AssertionError:  # between two tasks: none or two running
            return False

    await wait_for(rolled, timeout=90, what="the service to run a task with the new value")
    for answer in (await controller.request("GET", "/agents/pxsc-sw"), await controller.request("GET", "/secrets")):
        assert FIRST not in json.dumps(answer) and SECOND not in json.dumps(answer)
    assert lab.cli(1, "service", "inspect", "parallax-agent-pxsc-sw").returncode == 0
    status, _ = await controller.request("DELETE", "/agents/pxsc-sw")
    assert status == 202
    await controller.wait_gone("pxsc-sw", timeout=60)
