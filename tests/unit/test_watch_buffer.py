"""Subscribers are bounded (PARALLAX_WATCH_BUFFER): one too slow to keep up is cut off, holding at most
its buffer, while the store and everyone else go on. A watch client is then told 410 (re-list), like
for a too-old resourceVersion; the controller requeues every agent; metrics re-list.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.server import routes_watch
from api.server.state import STORE, WATCH
from controller.admission.admit import admit, spec_defaults
from controller.config import ConfigError, Settings
from controller.observe.metrics import AgentTracker
from controller.observe.watch import WatchHub
from controller.reconcile.controller import Controller
from controller.store.interface import CutOff, Subscription, Write
from controller.store.sqlite import SqliteStore


def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "data" / "agents.db"))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def open_store(tmp_path: Path, buffer: int) -> SqliteStore:
    s = settings(tmp_path)
    store = SqliteStore(s.store_path, spec_defaults(s), buffer=buffer)
    await store.open()
    return store


def test_a_subscription_holds_at_most_its_buffer_and_is_then_cut_off() -> None:
    queue: Subscription[int] = Subscription(3)
    assert all(queue.offer(i) for i in range(3))
    assert queue.get_nowait() == 0 and queue.offer(3)
    assert not queue.offer(4), "a fourth item queued: cut off"
    assert queue.qsize() == 0 and queue.cut_off == "fell more than 3 changes behind"
    assert not queue.offer(5)
    with pytest.raises(CutOff, match="behind"):
        queue.get_nowait()


async def test_a_subscription_ended_with_keep_queued_answers_what_it_holds_first() -> None:
    queue: Subscription[int] = Subscription(5)
    queue.offer(1)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert waiting.done() and waiting.result() == 1
    queue.offer(2)
    queue.cut("ended", keep_queued=True)
    assert await queue.get() == 2
    with pytest.raises(CutOff, match="ended"):
        await queue.get()


def test_the_buffer_setting() -> None:
    assert Settings.from_env({}).watch_buffer == 4096
    assert Settings.from_env({"PARALLAX_WATCH_BUFFER": "100"}).watch_buffer == 100
    with pytest.raises(ConfigError, match="PARALLAX_WATCH_BUFFER"):
        Settings.from_env({"PARALLAX_WATCH_BUFFER": "0"})


async def _sse_items(sock: socket.socket) -> list[dict[str, Any]]:
    """Every SSE item of a raw HTTP/1.1 chunked response, until the server ends it."""
    loop, raw = asyncio.get_running_loop(), b""
    async with asyncio.timeout(30):
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    text, rest = b"", body
    while rest:  # de-chunk
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        text, rest = text + rest[:size], rest[size + 2 :]
    items = []
    for block in text.decode().split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            items.append(json.loads("\n".join(data)))
    return items


async def test_a_watch_client_that_never_reads_is_cut_off_with_410_while_the_store_and_others_go_on(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, buffer=100_000)
    hub = WatchHub(store, buffer=16)
    await hub.start()
    app = web.Application()
    app[STORE], app[WATCH] = store, hub
    app.add_routes(routes_watch.routes)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    # A client that reads nothing, with a small receive window, so the server's writes to it block soon.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
    slow.setblocking(False)
    session = aiohttp.ClientSession()
    try:
        fast = await session.get(f"http://127.0.0.1:{server.port}/events")
        assert await fast.content.readline()  # the bookmark: subscribed
        await until(lambda: len(hub._listeners) == 2)  # the slow client's watch is open too
        watchers = set(hub._listeners)
        count, seen = 300, []

        async def read_fast() -> None:
            while len(seen) < count:
                line = await fast.content.readline()
                item = json.loads(line[6:]) if line.startswith(b"data: ") else {}
                assert item.get("type") != "ERROR", item
                if item.get("type") == "ADDED":
                    seen.append(item["object"]["metadata"]["name"])

        reading = asyncio.ensure_future(read_fast())
        s = settings(tmp_path)
        padding = {"note": "x" * 32768}  # 32 kB an item: the slow client's socket buffers fill after some dozens
        deepest = 0
        for i in range(count):
            await store.create(admit({"name": f"w{i}", "type": "claude", "annotations": padding}, s)[0])
            deepest = max([deepest, *(listener.queue.qsize() for listener in hub._listeners)])
        await asyncio.wait_for(reading, 30)
        assert seen == [f"w{i}" for i in range(count)], "the watcher that reads got everything"
        assert deepest <= 16, f"a watcher held {deepest} items, more than its buffer"
        assert len(hub._listeners) == 1, "the slow watcher was cut off; the fast one goes on"
        (cut,) = watchers - hub._listeners
        assert cut.queue.qsize() == 0, "nothing is kept for a watcher that was cut off"
        fast.close()
        # The slow client reads at last: what was already on its way, then ERROR 410, then the end.
        items = await _sse_items(slow)
        assert items[-1]["type"] == "ERROR" and items[-1]["object"]["code"] == 410
        assert "re-list" in items[-1]["object"]["message"], items[-1]
        added = [item for item in items if item["type"] == "ADDED"]
        assert 0 < len(added) < count
        assert [a["object"]["metadata"]["name"] for a in added] == [f"w{i}" for i in range(len(added))]
    finally:
        slow.close()
        await session.close()
        await server.close()
        await hub.stop()
        await store.close()


class _NoInstances:
    """Just enough runtime for ``Controller.enqueue_all``: it knows no instances."""

    async def agents_with_instances(self) -> set[str]:
        return set()


async def test_the_controller_cut_off_from_the_store_requeues_every_agent(tmp_path: Path) -> None:
    store = await open_store(tmp_path, buffer=4)
    s = settings(tmp_path)
    controller = Controller(s, store, _NoInstances())  # type: ignore[arg-type]
    watching = asyncio.ensure_future(controller._watch_store())
    try:
        await asyncio.sleep(0)
        names = [f"w{i}" for i in range(10)]
        # One write_all announces ten changes at once, more than the controller's subscription holds.
        await store.write_all([Write("create", n, admit({"name": n, "type": "claude"}, s)[0]) for n in names])
        await until(lambda: len(controller.queue) == len(names))
        queued = {await asyncio.wait_for(controller.queue.get(), 1) for _ in names}
        assert queued == set(names)
        # Subscribed again: later changes still arrive.
        await store.create(admit({"name": "later", "type": "claude"}, s)[0])
        assert await asyncio.wait_for(controller.queue.get(), 1) == "later"
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        controller.queue.shut_down()
        await store.close()


def test_metrics_resync_forgets_agents_deleted_while_changes_were_missed(tmp_path: Path) -> None:
    s = settings(tmp_path)
    a, b = (admit({"name": n, "type": "claude"}, s)[0] for n in ("a", "b"))
    for number, agent in enumerate((a, b), 1):
        agent.metadata.uid, agent.metadata.resource_version = f"uid-{number}", number
    tracker = AgentTracker()
    tracker.seed([a, b], 0.0)
    tracker.resync([b], 1.0)
    assert set(tracker._agents) == {"b"}
