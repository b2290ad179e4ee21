"""At most N API requests are worked on at once; the rest wait their turn.

API and reconciler share one event loop. Without a bound, a crowd of clients polling the API fills the
loop's ready queue and starves the reconcile workers (convergence slowed 5x in the overload test).

A slot is only ever held by work: a stream (followed logs, ``/events``, ``/ws``, ``GET /agents?watch``,
``GET /metrics/agents?watch``)
takes none, and is bounded separately (``api.server.streams``); a request that waits (``?wait=true`` on
``POST``/``DELETE /agents``) gives its slot back once its write is done, before it waits (``release_slot``).
Streams are recognised by their route and the same flag parser the handlers use (``api.server.params``), so
``?watch=yes`` or ``?follow=TRUE`` is a stream here exactly when it is one for the handler.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from api.server.errors import Handler
from api.server.params import flag_is_set
from api.server.streams import ClientGone, Streams

UNTHROTTLED_PATHS = frozenset({"/healthz"})

# (method, canonical route) -> the flag that makes it a stream; None: always one.
STREAM_ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/events"): None,
    ("GET", "/ws"): None,  # also the Parallax runtime client's WebSocket on PARALLAX_COMPAT_PORT
    ("GET", "/api/ws"): None,
    ("GET", "/agents"): "watch",
    ("GET", "/agents/{name}/logs"): "follow",
    ("GET", "/metrics/agents"): "watch",
    # exec and file transfers run as long as their command or their bytes do (api.server.routes_exec)
    ("POST", "/agents/{name}/exec"): None,
    ("GET", "/agents/{name}/exec/ws"): None,
    ("GET", "/agents/{name}/files"): None,
    ("PUT", "/agents/{name}/files"): None,
    ("DELETE", "/agents/{name}/files"): None,
}


def is_stream(request: web.Request) -> bool:
    route = request.match_info.route
    canonical = route.resource.canonical if route.resource is not None else ""
    key = (request.method, canonical)
    if key not in STREAM_ROUTES:
        return False
    flag = STREAM_ROUTES[key]
    return flag is None or flag_is_set(request.query, flag)


class _Slot:
    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = False

    async def acquire(self) -> None:
        await self._slots.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


_SLOT = web.RequestKey("parallax.throttle.slot", _Slot)


def release_slot(request: web.Request) -> None:
    """Give the request's slot back (before it waits for something that is not work: a change, a
    deletion); a no-op when it holds none."""
    slot = request.get(_SLOT)
    if slot is not None:
        slot.release()


def concurrency_middleware(limit: int, streams: Streams) -> web.middleware:  # type: ignore[valid-type]
    slots = asyncio.Semaphore(limit)

    @web.middleware
    async def throttle(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNTHROTTLED_PATHS:
            return await handler(request)
        if is_stream(request):
            return await streams.serve(request, handler)
        slot = _Slot(slots)
        request[_SLOT] = slot
        await slot.acquire()
        try:
            return await handler(request)
        except ClientGone:  # a waiting request whose client left (api.server.streams.until_gone)
            return web.Response(status=499)
        finally:
            slot.release()

    return throttle
