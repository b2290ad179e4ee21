"""Scenario 5: 200 agents applied at once while 50 clients hammer the API.

The controller stays responsive, its queue drains, Docker sees bounded concurrency, and every agent
converges. Figures are printed; the bounds asserted are loose (shared, noisy machines).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import aiohttp
import pytest

from tests.chaos.invariants import check_converged, our_containers
from tests.server_process import Server

pytestmark = [pytest.mark.docker, pytest.mark.chaos]

AGENTS = 200
CLIENTS = 50


async def test_overload_stays_responsive_and_converges(server_env: dict[str, str], docker):
    env = {**server_env, "PARALLAX_WORKERS": "4", "PARALLAX_DOCKER_CONCURRENCY": "8", "DEFAULT_MEMORY": "16m"}
    controller = Server(env)
    await controller.start()
    controller.base_url = controller.url
    tag = uuid.uuid4().hex[:4]
    names = [f"load-{tag}-{i:03d}" for i in range(AGENTS)]
    stop = asyncio.Event()
    served = 0

    async def hammer(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal served
        while not stop.is_set():
            path = "/agents" if i % 2 else f"/agents/{names[i % AGENTS]}"
            async with session.get(controller.base_url + path) as resp:
                await resp.read()
                served += 1

    health: list[float] = []

    async def probe(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(controller.base_url + "/healthz") as resp:
                assert resp.status == 200
            health.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.2)

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS + 20)) as session:
        background = [asyncio.create_task(hammer(session, i)) for i in range(CLIENTS)]
        background.append(asyncio.create_task(probe(session)))
        creates = [
            session.post(controller.base_url + "/agents", json={"name": name, "type": "claude"}) for name in names
        ]
        statuses = []
        for response in await asyncio.gather(*creates):
            statuses.append(response.status)
            response.release()
        assert statuses.count(201) == AGENTS, set(statuses)
        accepted = time.monotonic() - started
        try:
            while True:
                async with session.get(controller.base_url + "/agents?phase=Running") as resp:
                    running = len((await resp.json())["items"])
                if running == AGENTS:
                    break
                assert time.monotonic() - started < 300, f"only {running}/{AGENTS} running after 300 s"
                await asyncio.sleep(1)
        finally:
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
    converged = time.monotonic() - started
    _, listing = await controller.call("GET", "/agents")
    problems = check_converged(listing["items"], await our_containers(docker, env["PARALLAX_INSTANCE"]))
    health.sort()
    p50 = statistics.median(health)
    p99 = health[int(len(health) * 0.99) - 1] if len(health) > 1 else health[0]
    print(
        f"\nchaos/overload: {AGENTS} agents accepted in {accepted:.1f} s, all running after {converged:.1f} s; "
        f"{served} API reads served meanwhile; /healthz p50 {p50:.1f} ms p99 {p99:.1f} ms max {health[-1]:.1f} ms; "
        f"{problems}"
    )
    assert not any(problems.values())
    # A stalled loop shows as seconds. On 2 shared cores, with the 50 clients in this same process, the
    # p50 measured 95 and 119 ms (2026-12-02); from a process of its own, about 200 ms.
    assert p50 < 250, f"/healthz p50 {p50:.1f} ms"
    assert controller.terminate() == 0
