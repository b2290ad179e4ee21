"""Scenario 1: the controller is SIGKILLed at random moments while agents are applied, changed and deleted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from typing import Any

import aiodocker
import aiohttp
import pytest

from tests.chaos.invariants import check_converged, our_containers
from tests.server_process import Server

pytestmark = [pytest.mark.docker, pytest.mark.chaos]

AGENTS = 50
STABLE = 10
KILLS = 6


async def _churn(server: Server, rng: random.Random, names: list[str], acked: dict[str, Any]) -> None:
    """Random creates, changes and deletes; ``acked`` keeps what the server confirmed for each name."""
    async with aiohttp.ClientSession() as session:
        while True:
            name = rng.choice(names)
            roll = rng.random()
            acked.pop(name, None)  # in flight: either outcome is acceptable until confirmed
            try:
                if roll < 0.45:
                    memory = rng.choice(["32m", "48m", "64m"])
                    body = {"name": name, "type": "claude", "resources": {"memory": memory}}
                    async with session.post(f"{server.url}/agents", json=body) as resp:
                        if resp.status in (201, 409):
                            pass
                    async with session.patch(
                        f"{server.url}/agents/{name}", json={"resources": {"memory": memory}}
                    ) as resp:
                        if resp.status == 200:
                            acked[name] = memory
                else:
                    async with session.delete(f"{server.url}/agents/{name}") as resp:
                        if resp.status in (202, 404):
                            acked[name] = None
            except (aiohttp.ClientError, ConnectionError):
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0, 0.05))


async def _agents(server: Server) -> list[dict[str, Any]]:
    status, body = await server.call("GET", "/agents")
    assert status == 200
    return list(body["items"])


async def test_sigkilled_controller_loses_nothing_and_duplicates_nothing(
    server_env: dict[str, str], docker: aiodocker.Docker
):
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "20261127")))
    instance = server_env["PARALLAX_INSTANCE"]
    tag = uuid.uuid4().hex[:4]  # fresh names: a container stuck in a daemon from an earlier run cannot clash
    names = [f"chaos-{tag}-{i:02d}" for i in range(AGENTS)]
    server = Server(server_env)
    await server.start()
    for name in names[:STABLE]:
        status, body = await server.call("POST", "/agents", {"name": name, "type": "claude"})
        assert status == 201, body

    async def stable_running() -> bool:
        agents = {a["metadata"]["name"]: a for a in await _agents(server)}
        return all(agents.get(n, {}).get("status", {}).get("phase") == "Running" for n in names[:STABLE])

    deadline = time.monotonic() + 60
    while not await stable_running():
        assert time.monotonic() < deadline, "stable agents did not start"
        await asyncio.sleep(0.2)
    stable_before = {
        c["Config"]["Labels"]["parallax.agent"]: (c["Id"], c["State"]["StartedAt"])
        for c in await our_containers(docker, instance)
    }

    acked: dict[str, Any] = {}
    for _ in range(KILLS):
        churn = asyncio.create_task(_churn(server, rng, names[STABLE:], acked))
        await asyncio.sleep(rng.uniform(0.3, 2.0))
        server.kill()
        churn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await churn
        await server.start()

    started = time.monotonic()
    while True:
        agents = await _agents(server)
        problems = check_converged(agents, await our_containers(docker, instance))
        settled = all(a["status"].get("phase") == "Running" for a in agents)
        if settled and not any(problems.values()):
            break
        assert time.monotonic() - started < 120, f"not converged after 120 s: {problems}"
        await asyncio.sleep(0.5)
    converge_seconds = time.monotonic() - started

    records = {a["metadata"]["name"]: a for a in agents}
    lost = 0
    for name, memory in acked.items():
        if memory is None:
            lost += name in records
        else:
            lost += name not in records or records[name]["spec"]["resources"]["memory"] != memory
    containers = {c["Config"]["Labels"]["parallax.agent"]: c for c in await our_containers(docker, instance)}
    needless = sum(
        1
        for name, (cid, started_at) in stable_before.items()
        if name in names[:STABLE]
        and (containers[name]["Id"] != cid or containers[name]["State"]["StartedAt"] != started_at)
    )
    print(
        f"\nchaos/sigkill: {KILLS} kills, {len(records)} agents at the end, converged in {converge_seconds:.1f} s; "
        f"lost={lost} duplicated={problems['duplicated']} orphaned={problems['orphaned']} "
        f"restarted_needlessly={needless}"
    )
    assert lost == 0
    assert needless == 0
    assert server.terminate() == 0
