"""The Parallax control plane's runtime contract, served beside our own API: ``/api/*`` on the main port,
and, with ``PARALLAX_COMPAT_PORT`` set, on a port of its own too, where ``/ws`` is its WebSocket (the
client derives ``ws://<host>:<port>/ws`` from its base URL; on the main port ``/ws`` is our watch).

The second port serves a small application sharing the main one's state (store, controller, live views,
streams, watch hub) and middlewares (errors, the token, the request throttle), so both ports behave the
same and count against the same limits. It listens on ``PARALLAX_HOST``, so it is loopback-only unless a
token is configured (``api.server.auth.check_bind``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from api.server.compat import answers, events, routes
from api.server.state import CONTROLLER, LIVE, RUNTIME, SETTINGS, STATS, STORE, WATCH
from api.server.streams import STREAMS
from controller.config import Settings

log = logging.getLogger("parallax.api")

COMPAT_PORT = web.AppKey("compat_port", int)
"""The port the compat application listens on (the one bound, when ``PARALLAX_COMPAT_PORT`` is 0)."""

SHARED_KEYS: tuple[web.AppKey[Any], ...] = (
    SETTINGS,
    STREAMS,
    STORE,
    CONTROLLER,
    RUNTIME,
    LIVE,
    STATS,
    WATCH,
    routes.ACTIVITY,
    answers.ANSWERS,
)


def compat_application(main: web.Application, middlewares: Sequence[Any]) -> web.Application:
    settings = main[SETTINGS]
    app = web.Application(middlewares=list(middlewares), client_max_size=settings.max_body_bytes)
    for key in SHARED_KEYS:
        app[key] = main[key]
    app.add_routes(routes.routes)
    app.add_routes(events.routes)
    app.router.add_get("/ws", events.runtime_websocket)
    return app


def setup_compat(app: web.Application, settings: Settings, middlewares: Sequence[Any]) -> None:
    """Add ``/api/*`` to ``app``; with ``settings.compat_port``, serve it on that port as well (once the
    main application's state is up: call after its lifecycle context is appended)."""
    app[routes.ACTIVITY] = routes.Activity()
    app[answers.ANSWERS] = answers.Answers()

    async def end_readers(app: web.Application) -> None:
        await app[answers.ANSWERS].close()

    app.on_shutdown.append(end_readers)  # before the live views' pool closes
    app.add_routes(routes.routes)
    app.add_routes(events.routes)
    if settings.compat_port is None:
        return

    async def serve_port(main: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(
            compat_application(main, middlewares),
            handle_signals=False,
            keepalive_timeout=settings.idle_timeout_seconds,
            access_log=logging.getLogger("parallax.access"),
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.compat_port)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or ()
            main[COMPAT_PORT] = sockets[0].getsockname()[1] if sockets else int(settings.compat_port or 0)
            log.info("serving the Parallax runtime contract on http://%s:%d", settings.host, main[COMPAT_PORT])
            yield
        finally:
            await runner.cleanup()

    app.cleanup_ctx.append(serve_port)
