"""Streams a client drops (``logs -f`` then Ctrl-C, a watch, an SSE or WebSocket client going away) must
give back everything they held, and can never take the controller's own Docker calls away from it.

Everything here runs against the real Docker daemon and a real ``parallax serve`` process, whose open
file descriptors and RSS are read from ``/proc/<pid>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable

import aiodocker
import aiohttp
import pytest

from tests.harness import Controller, wait_for
from tests.server_process import Server, wait_running

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def drop_one(port: int, path: str, *, websocket: bool = False, timeout: float = 10.0) -> int:
    """Open ``path``, wait for the response's status line (the stream is open), then hang up without a
    word, as a client killed by Ctrl-C does. The status, or 0 when no answer came in ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if websocket:
            head += f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
            head += "Sec-WebSocket-Version: 13\r\n"
        writer.write((head + "\r\n").encode())
        await writer.drain()
        try:
            async with asyncio.timeout(timeout):
                line = await reader.readline()
        except TimeoutError:
            return 0
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 else 0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def drop_many(port: int, path: str, count: int, *, wave: int = 50, websocket: bool = False) -> dict[int, int]:
    """Drop ``count`` accepted streams of ``path``, ``wave`` at a time; a 429 (the follower bound, while
    the previous wave is being let go) is tried again. Statuses seen, counted."""
    seen: dict[int, int] = {}
    accepted = 0
    deadline = time.monotonic() + 240
    while accepted < count and time.monotonic() < deadline:
        batch = min(wave, count - accepted)
        statuses = await asyncio.gather(*(drop_one(port, path, websocket=websocket) for _ in range(batch)))
        for status in statuses:
            seen[status] = seen.get(status, 0) + 1
        ok = sum(1 for s in statuses if s in (200, 101))
        accepted += ok
        if ok < batch:
            if not any(s == 429 for s in statuses):
                break  # no answer at all (the server is stuck): the caller's checks will say so
            await asyncio.sleep(0.5)
    return seen


async def _post(server: Server, body: dict[str, object]) -> None:
    status, created = await server.call("POST", "/agents", body)
    assert status == 201, created


async def _settle_fds(pid: int, ceiling: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    count = open_fds(pid)
    while count > ceiling and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        count = open_fds(pid)
    return count


async def test_hundreds_of_dropped_log_followers_never_starve_the_reconciler(
    server_env: dict[str, str], docker: aiodocker.Docker
):
    server = Server(server_env)
    await server.start()
    assert server.proc is not None
    pid, port = server.proc.pid, int(server_env["PORT"])
    quiet, chatty = f"quiet-{uuid.uuid4().hex[:6]}", f"chatty-{uuid.uuid4().hex[:6]}"
    await _post(server, {"name": quiet, "type": "claude", "env": {"TICK_SECONDS": "3600"}})
    await _post(server, {"name": chatty, "type": "claude", "env": {"TICK_SECONDS": "0.05"}})
    await wait_running(server, quiet)
    await wait_running(server, chatty)

    follow_quiet = f"/agents/{quiet}/logs?follow=true&tail=1"
    await drop_many(port, follow_quiet, 20)  # warm-up: the live client's connections, first-use caches
    await asyncio.sleep(2)
    baseline = open_fds(pid)

    quiet_seen = await drop_many(port, follow_quiet, 500)
    chatty_seen = await drop_many(port, f"/agents/{chatty}/logs?follow=true&tail=5", 100)
    print(f"\nquiet follows: {quiet_seen}; chatty follows: {chatty_seen}; fds right after: {open_fds(pid)}")

    # a new agent still converges
    fresh = f"fresh-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    await _post(server, {"name": fresh, "type": "claude"})
    await wait_running(server, fresh, timeout=30)
    print(f"new agent Running after {time.monotonic() - started:.2f} s")

    # a killed agent is restarted promptly
    before = (await server.call("GET", f"/agents/{quiet}"))[1]["status"]
    await docker.containers.container(before["containerId"]).kill()
    killed = time.monotonic()

    async def restarted() -> bool:
        _, body = await server.call("GET", f"/agents/{quiet}")
        status = body["status"]
        return bool(status.get("phase") == "Running" and status.get("restartCount", 0) > before.get("restartCount", 0))

    await wait_for(restarted, timeout=15, what="the killed agent to be restarted")
    print(f"killed agent Running again after {time.monotonic() - killed:.2f} s")
    async with aiohttp.ClientSession() as session, session.get(server.url + "/readyz") as resp:
        assert resp.status == 200, await resp.text()

    assert quiet_seen.get(200, 0) == 500, (quiet_seen, server.output()[-3000:])
    assert chatty_seen.get(200, 0) == 100, chatty_seen
    settled = await _settle_fds(pid, baseline + 10)
    print(f"server fds: baseline {baseline}, after 600 dropped log followers {settled}")
    assert settled <= baseline + 10, f"fds grew from {baseline} to {settled}"
    assert "Traceback" not in server.output(), server.output()[-5000:]


async def test_every_kind_of_dropped_stream_leaves_fds_and_rss_flat(server_env: dict[str, str]):
    server = Server(server_env)
    await server.start()
    assert server.proc is not None
    pid, port = server.proc.pid, int(server_env["PORT"])
    quiet = f"quiet-{uuid.uuid4().hex[:6]}"
    await _post(server, {"name": quiet, "type": "claude", "env": {"TICK_SECONDS": "3600"}})
    await wait_running(server, quiet)

    kinds: list[tuple[str, str, bool]] = [
        ("logs follow", f"/agents/{quiet}/logs?follow=true&tail=1", False),
        ("GET /agents?watch=true", "/agents?watch=true", False),
        ("GET /events", "/events", False),
        ("/ws", "/ws", True),
    ]
    for _, path, websocket in kinds:  # warm-up
        await drop_many(port, path, 50, websocket=websocket)
    await asyncio.sleep(2)
    fds, rss = open_fds(pid), rss_mib(pid)
    report = []
    for label, path, websocket in kinds:
        seen = await drop_many(port, path, 500, websocket=websocket)
        ok = seen.get(101 if websocket else 200, 0)
        assert ok == 500, (label, seen)
        settled = await _settle_fds(pid, fds + 10)
        report.append(f"{label}: 500 dropped, fds {fds} -> {settled}, RSS {rss:.1f} -> {rss_mib(pid):.1f} MiB")
        assert settled <= fds + 10, report
    print("\n" + "\n".join(report))
    assert rss_mib(pid) - rss < 25, report
    async with aiohttp.ClientSession() as session, session.get(server.url + "/readyz") as resp:
        assert resp.status == 200


async def _open_stream(controller: Controller, path: str) -> aiohttp.ClientResponse:
    assert controller.session is not None
    resp = await controller.session.get(controller.base_url + path, timeout=aiohttp.ClientTimeout(total=None))
    return resp


async def test_followers_beyond_the_bound_get_429_with_the_error_json(
    start_controller: Callable[..., Awaitable[Controller]],
):
    controller = await start_controller(max_streams=4)
    body = {"name": "bound", "type": "claude", "env": {"TICK_SECONDS": "3600"}}
    status, _ = await controller.request("POST", "/agents", body)
    assert status == 201
    await controller.wait_agent("bound", lambda a: a["status"].get("phase") == "Running")
    open_streams = [
        await _open_stream(controller, "/events"),
        await _open_stream(controller, "/agents?watch=true"),
        await _open_stream(controller, "/agents/bound/logs?follow=true&tail=1"),
        await _open_stream(controller, "/agents/bound/logs?follow=yes&tail=1"),
    ]
    try:
        assert [r.status for r in open_streams] == [200, 200, 200, 200]
        for path in ("/events", "/agents?watch=1", "/agents/bound/logs?follow=true", "/ws"):
            status, body = await controller.request("GET", path)
            assert status == 429, (path, status, body)
            assert body["error"]["code"] == "TOO_MANY_STREAMS", body
            assert "PARALLAX_MAX_STREAMS" in body["error"]["message"]
        # short requests are not streams: they still answer
        status, _ = await controller.request("GET", "/agents")
        assert status == 200
        status, _ = await controller.request("GET", "/agents/bound/logs?tail=1")
        assert status == 200
    finally:
        for resp in open_streams:
            resp.close()

    async def admitted_again() -> bool:
        assert controller.session is not None
        async with controller.session.get(controller.base_url + "/events") as resp:
            return resp.status == 200

    await wait_for(admitted_again, timeout=5, what="a stream to be admitted once others left")
