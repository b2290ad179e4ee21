"""The request throttle (PARALLAX_API_CONCURRENCY slots) cannot be stalled by requests that wait.

Streams spelled any way a handler accepts (``watch=yes``, ``watch=True``, an empty ``watch``,
``follow=YES``) take no slot, and ``?wait=true`` on POST/DELETE gives its slot back before waiting, so
many of each held open leave ``GET /agents`` answering at once. Real Docker daemon, no mocks.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.harness import Controller, running

pytestmark = pytest.mark.docker

IGNORES_SIGTERM = ["/bin/sh", "-c", "trap '' TERM; echo ignoring TERM; while true; do sleep 1; done"]


async def _create(controller: Controller, body: dict[str, Any]) -> None:
    status, created = await controller.request("POST", "/agents", body)
    assert status == 201, created


async def test_many_waits_and_streams_of_every_spelling_leave_get_agents_prompt(
    start_controller: Callable[..., Awaitable[Controller]],
):
    controller = await start_controller(api_concurrency=8, workers=2)
    assert controller.session is not None
    stubborn = [f"stubborn-{i}" for i in range(10)]
    for name in stubborn:
        await _create(
            controller, {"name": name, "type": "claude", "command": IGNORES_SIGTERM, "stopGracePeriodSeconds": 60}
        )
    await _create(controller, {"name": "quiet", "type": "claude", "env": {"TICK_SECONDS": "3600"}})
    for name in [*stubborn, "quiet"]:
        await controller.wait_agent(name, running)

    held: list[asyncio.Task[Any]] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def hold(method: str, path: str) -> int:
        async with session.request(method, controller.base_url + path) as resp:
            await resp.read()  # streams and waits end only when cancelled (or their timeout passes)
            return resp.status

    streams = [
        "/agents?watch=yes",
        "/agents?watch=True",
        "/agents?watch",
        "/agents?watch=1",
        "/agents?watch=TRUE",
        "/events",
        "/agents/quiet/logs?follow=YES&tail=1",
        "/agents/quiet/logs?follow=&tail=1",
    ]
    try:
        for path in streams:
            held += [asyncio.create_task(hold("GET", path)) for _ in range(8)]
        # each DELETE waits out the 60 s grace period of an agent that ignores SIGTERM
        held += [asyncio.create_task(hold("DELETE", f"/agents/{name}?wait=true&timeout=120")) for name in stubborn]
        # the two workers are busy stopping those: new agents stay Pending, and their POSTs wait
        held += [asyncio.create_task(_post_wait(session, controller, f"new-{i}")) for i in range(10)]
        await asyncio.sleep(3)  # everything is open and waiting
        assert not any(task.done() for task in held), [t.result() for t in held if t.done()]

        timings = []
        for _ in range(20):
            started = time.perf_counter()
            async with asyncio.timeout(5):
                status, body = await controller.request("GET", "/agents")
            timings.append(time.perf_counter() - started)
            assert status == 200 and len(body["items"]) >= 21
        print(
            f"\n{len(held)} streams and waits open: GET /agents p50 {statistics.median(timings) * 1000:.1f} ms, "
            f"max {max(timings) * 1000:.1f} ms"
        )
        assert max(timings) < 1.0, timings
        assert not any(task.done() for task in held)
    finally:
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await session.close()


async def _post_wait(session: aiohttp.ClientSession, controller: Controller, name: str) -> int:
    body = {"name": name, "type": "claude"}
    async with session.post(controller.base_url + "/agents?wait=yes&timeout=120", json=body) as resp:
        await resp.read()
        return resp.status
