"""At most N API requests are worked on at once; the rest wait their turn.

API and reconciler share one event loop. Without a bound, a crowd of clients polling the API fills the
loop's ready queue and starves the reconcile workers (convergence slowed 5x in the overload test).
Long-lived streams (watches, followed logs) and ``/healthz`` do not take a slot.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from api.errors import Handler

UNTHROTTLED_PATHS = ("/healthz", "/events", "/ws")


def _streaming(request: web.Request) -> bool:
    if request.path in UNTHROTTLED_PATHS:
        return True
    return request.query.get("watch") in ("true", "1") or request.query.get("follow") in ("true", "1")


def concurrency_middleware(limit: int) -> web.middleware:  # type: ignore[valid-type]
    slots = asyncio.Semaphore(limit)

    @web.middleware
    async def throttle(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _streaming(request):
            return await handler(request)
        async with slots:
            return await handler(request)

    return throttle
