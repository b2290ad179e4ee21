"""Agents' answers to the messages sent through ``/api``: read from their output, sent to every connected
client as ``message`` events, and returned by ``send`` with ``expectResponse``.

Sending a message opens (or joins) one reader of that agent's output, through the same live-view pool as a
followed ``/agents/{name}/logs``, before the message is written, so no line of the answer is missed. The
reader ends once every message sent while it was open is answered, or after ``IDLE_SECONDS`` without a
line. It takes a place among ``PARALLAX_MAX_STREAMS`` while open: with none free, the message is still
sent, but its answer is not read (and ``expectResponse`` is answered 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from api.server.state import LIVE
from api.server.streams import STREAMS
from controller.compat.answers import AnswerParser
from controller.model.errors import AgentError

log = logging.getLogger("parallax.api")

IDLE_SECONDS = 900.0
CLIENT_QUEUE = 256


@dataclass
class Reader:
    agent_id: str
    container_id: str
    lines: AsyncIterator[str]
    stack: contextlib.AsyncExitStack
    waiting: deque[asyncio.Future[dict[str, Any] | None]] = field(default_factory=deque)
    pending: int = 0
    accepting: bool = True
    task: asyncio.Task[None] | None = None


class Answers:
    """The open readers (one per container) and the connected WebSocket clients' queues."""

    def __init__(self) -> None:
        self.readers: dict[str, Reader] = {}
        self.clients: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def connect(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CLIENT_QUEUE)
        self.clients.add(queue)
        return queue

    def disconnect(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.clients.discard(queue)

    def broadcast(self, message: dict[str, Any]) -> None:
        for queue in list(self.clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # too slow to keep up: its connection is ended (None), like a cut-off watch
                self.clients.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    async def expect(self, request: web.Request, agent_id: str, container_id: str) -> asyncio.Future[Any] | None:
        """A future for the answer to the next message sent to ``container_id`` (None: it will not be read,
        every stream place is taken). Call before writing the message."""
        reader = self.readers.get(container_id)
        if reader is None or not reader.accepting:
            streams = request.app[STREAMS]
            if not streams.hold():
                return None
            stack = contextlib.AsyncExitStack()
            try:
                lines = await stack.enter_async_context(
                    request.app[LIVE].open_logs(container_id, tail="0", since=None, timestamps=False, follow=True)
                )
            except BaseException:
                streams.let_go()
                raise
            reader = Reader(agent_id, container_id, lines, stack)
            self.readers[container_id] = reader
            reader.task = asyncio.create_task(self._read(reader, request.app))
        reader.pending += 1
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        reader.waiting.append(future)
        return future

    def unsent(self, container_id: str, future: asyncio.Future[Any]) -> None:
        """The message ``future`` was for could not be written: nothing will answer it."""
        reader = self.readers.get(container_id)
        if reader is not None and future in reader.waiting:
            reader.waiting.remove(future)
            reader.pending -= 1
            if reader.pending <= 0 and reader.task is not None:  # nothing left to read for: give the place back
                reader.accepting = False
                reader.task.cancel()
        future.cancel()

    async def _read(self, reader: Reader, app: web.Application) -> None:
        parser = AnswerParser(reader.agent_id)
        try:
            while reader.pending > 0:
                try:
                    line = await asyncio.wait_for(anext(reader.lines), IDLE_SECONDS)
                except (StopAsyncIteration, TimeoutError, AgentError, aiohttp.ClientError, OSError):
                    break
                message = parser.feed(line)
                if message is None:
                    continue
                reader.pending -= 1
                self.broadcast(message)
                if reader.waiting:
                    future = reader.waiting.popleft()
                    if not future.done():
                        future.set_result(message)
        finally:
            reader.accepting = False
            if self.readers.get(reader.container_id) is reader:
                del self.readers[reader.container_id]
            for future in reader.waiting:
                if not future.done():
                    future.set_result(None)
            app[STREAMS].let_go()
            with contextlib.suppress(Exception):
                await reader.stack.aclose()

    async def close(self) -> None:
        tasks = [r.task for r in self.readers.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)


ANSWERS = web.AppKey("compat_answers", Answers)


async def wait_answer(future: asyncio.Future[Any] | None, timeout_ms: float | None) -> dict[str, Any] | None:
    """The answer, or None when none came within ``timeout_ms`` (default 30 s, as in the original runtime)
    or it is not being read."""
    if future is None:
        return None
    seconds = (timeout_ms if timeout_ms is not None else 30000) / 1000
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            result: dict[str, Any] | None = await asyncio.shield(future)
            return result
    return None
