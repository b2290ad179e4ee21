"""Long-lived requests (streams and waits) end when their client goes, and streams are bounded.

aiohttp (since 3.9) does not cancel a handler when its client disconnects. A handler that writes finds
out at its next write, but one that waits (a followed log of an agent that prints nothing, a quiet watch,
``?wait=true``) would wait on, holding its Docker connection, its watch listener and a file descriptor.
So every long-lived request runs as a task watched by one ticker: when the connection is gone, the task
is cancelled, and its ``finally`` blocks and context managers close what it held.

At most ``PARALLAX_MAX_STREAMS`` streams (followed logs, ``/events``, ``/ws``, ``GET /agents?watch``)
are open at once; one more is answered 429 ``TOO_MANY_STREAMS`` with ``Retry-After``, before it holds
anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from api.server.errors import Handler, error_response

log = logging.getLogger("parallax.api")

T = TypeVar("T")

POLL_SECONDS = 0.25


class ClientGone(Exception):
    """The client of a long-lived request disconnected; nothing is to be answered."""


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class Streams:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._watched: dict[asyncio.Task[Any], web.Request] = {}
        self._dropped: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run a stream's handler, if there is room for one more stream; quietly end it when its client
        goes."""
        if self.open >= self.limit:
            response = error_response(
                429,
                "TOO_MANY_STREAMS",
                f"{self.open} streams (followed logs, watches, /events, /ws) are open, the most this server "
                f"serves at once (PARALLAX_MAX_STREAMS={self.limit}); close one or try again later",
            )
            response.headers["Retry-After"] = "1"
            return response
        self.open += 1
        try:
            return await self.until_gone(request, handler(request))
        except ClientGone:
            return web.Response(status=499)  # nobody reads it: aiohttp finds the connection closed
        finally:
            self.open -= 1

    def hold(self) -> bool:
        """Take a place for a stream the server itself keeps open (reading an agent's output for its
        answers, ``api.server.compat.answers``); False when every place is taken. ``let_go`` gives it back."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def let_go(self) -> None:
        self.open -= 1

    async def until_gone(self, request: web.Request, work: Awaitable[T]) -> T:
        """``work``'s result; ``ClientGone`` (``work`` cancelled) as soon as the client disconnects."""
        if _gone(request):
            if asyncio.iscoroutine(work):
                work.close()
            raise ClientGone
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._watched[task] = request
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())
        try:
            return await task
        except asyncio.CancelledError:
            if task in self._dropped:
                current = asyncio.current_task()
                if current is None or not current.cancelling():
                    raise ClientGone from None
            raise
        except ConnectionError as exc:  # a write found the client gone
            raise ClientGone from exc
        finally:
            self._watched.pop(task, None)
            self._dropped.discard(task)

    async def _tick(self) -> None:
        while self._watched:
            await asyncio.sleep(POLL_SECONDS)
            for task, request in list(self._watched.items()):
                if not task.done() and task not in self._dropped and _gone(request):
                    self._dropped.add(task)
                    task.cancel()

    def end_all(self) -> None:
        """End every long-lived request now (at shutdown), as if its client had gone."""
        for task in list(self._watched):
            self._dropped.add(task)
            task.cancel()

    async def close(self) -> None:
        self.end_all()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker


STREAMS = web.AppKey("streams", Streams)


async def until_gone(request: web.Request, work: Awaitable[T]) -> T:
    """``work``, ended with ``ClientGone`` if the client disconnects first (for a handler that waits)."""
    return await request.app[STREAMS].until_gone(request, work)
