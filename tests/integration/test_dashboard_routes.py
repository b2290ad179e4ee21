"""What the dashboard's page relies on, over plain HTTP: its files open to anyone and locked down by
their headers, the data behind the token, and the short usage history the stats sampler keeps."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.conftest import StartController
from tests.harness import running

pytestmark = pytest.mark.docker

TOKEN = "ui-route-token-5e2a9c1d7f"


async def test_the_page_needs_no_token_the_data_does(start_controller: StartController) -> None:
    controller = await start_controller(api_token=TOKEN)
    async with aiohttp.ClientSession() as session:
        async with session.get(controller.base_url + "/ui/") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            etag = resp.headers["ETag"]
        assert '<script src="app.js"' in page and "http" not in page.split("<body>")[0].replace("http-equiv", "")
        async with session.get(controller.base_url + "/ui/", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
        async with session.get(controller.base_url + "/ui", allow_redirects=False) as resp:
            assert resp.status == 308 and resp.headers["Location"] == "/ui/"
        async with session.get(controller.base_url + "/ui/../agents") as resp:
            assert resp.status == 401  # normalised to /agents by the client: still the API's rule
        async with session.get(controller.base_url + "/ui/nothing-here.js") as resp:
            assert resp.status == 404
        for path in ("/metrics/agents", "/metrics/agents?watch=true", "/agents/x/metrics/history"):
            async with session.get(controller.base_url + path) as resp:
                assert resp.status == 401, path


async def test_usage_history_and_the_fleets_latest_come_from_the_sampler(start_controller: StartController) -> None:
    controller = await start_controller(stats_seconds=0.5)
    status, _ = await controller.request("POST", "/agents", {"name": "ui-usage", "type": "claude"})
    assert status == 201
    await controller.wait_agent("ui-usage", running)
    deadline = time.monotonic() + 15
    history: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, history = await controller.request("GET", "/agents/ui-usage/metrics/history")
        if len(history["points"]) >= 3:  # type: ignore[arg-type]
            break
        await asyncio.sleep(0.2)
    points = history["points"]
    assert isinstance(points, list) and len(points) >= 3, history
    assert history["intervalSeconds"] == 0.5 and history["windowSeconds"] == 600
    times = [p["time"] for p in points]
    assert times == sorted(times) and time.time() - times[-1] < 5
    assert all(p["memoryBytes"] > 0 and p["memoryLimitBytes"] == 64 * 1024 * 1024 for p in points)
    assert all(isinstance(p["cpuPercent"], float) for p in points[1:])
    status, fleet = await controller.request("GET", "/metrics/agents")
    assert status == 200 and [i["agent"] for i in fleet["items"]] == ["ui-usage"]
    # the stream: a list at once, then one after every sampling round
    async with controller.session.get(controller.base_url + "/metrics/agents?watch=true") as resp:  # type: ignore[union-attr]
        assert resp.headers["Content-Type"] == "text/event-stream"
        seen = 0
        started = time.monotonic()
        async for line in resp.content:
            if line.startswith(b"event: USAGE"):
                seen += 1
            if seen == 3:
                break
        assert time.monotonic() - started < 3
    status, _ = await controller.request("GET", "/agents/ui-nobody/metrics/history")
    assert status == 404
