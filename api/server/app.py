"""The aiohttp application: one ``web.Application`` running the API and the controller together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from api.server import (
    openapi,
    routes_agents,
    routes_apply,
    routes_exec,
    routes_files,
    routes_health,
    routes_live,
    routes_metrics,
    routes_secrets,
    routes_ui,
    routes_usage,
    routes_watch,
)
from api.server.auth import auth_middleware
from api.server.compat import setup_compat
from api.server.errors import error_middleware
from api.server.state import CONTROLLER, LEADER, LIVE, RUNTIME, SETTINGS, STATS, STORE, WATCH
from api.server.streams import STREAMS, Streams
from api.server.throttle import concurrency_middleware
from controller.admission.admit import spec_defaults
from controller.config import Settings
from controller.egress.denials import DenialRecorder
from controller.egress.gateway import store_lookup
from controller.observe.metrics import Metrics
from controller.observe.stats_refresher import StatsRefresher
from controller.observe.watch import WatchHub
from controller.reconcile.controller import Controller
from controller.runtime.docker.runtime import DockerRuntime
from controller.runtime.select import make_runtime
from controller.store.cipher import CipherError, SecretCipher
from controller.store.interface import StoreUnavailable
from controller.store.url import leader_election, open_store
from controller.tasks import cancel_all

log = logging.getLogger("parallax.api")

MAX_LOGGED_REASON = 200


class OneLineBadRequests(logging.Filter):
    """aiohttp's server logs every request it cannot parse (a header over 8190 bytes, a malformed
    request line) as an ERROR with a full traceback, so any client could flood the log. Such a request is
    the client's mistake, answered 4xx and logged once by the access log: this makes aiohttp's own record
    of it one DEBUG line saying why, without a traceback and without echoing the request's bytes.
    Everything else the server logs (a real bug) keeps its level and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            reason = " ".join(str(exc.message).split()).split(": b", 1)[0][:MAX_LOGGED_REASON]
            record.msg, record.args = "refused a malformed HTTP request from %s: %s %s", (remote, exc.code, reason)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def server_logger() -> logging.Logger:
    """The logger of aiohttp's HTTP server (``handler_args``), with ``OneLineBadRequests`` on it."""
    logger = logging.getLogger("parallax.http")
    if not any(isinstance(f, OneLineBadRequests) for f in logger.filters):
        logger.addFilter(OneLineBadRequests())
    return logger


def make_app(settings: Settings, *, run_controller: bool = True, specs_dir: str | None = None) -> web.Application:
    streams = Streams(settings.max_streams)
    # auth before the concurrency limit: a request without the token is refused without taking a slot
    middlewares = [error_middleware, auth_middleware, concurrency_middleware(settings.api_concurrency, streams)]
    app = web.Application(
        middlewares=middlewares,
        client_max_size=settings.max_body_bytes,
        handler_args={"logger": server_logger()},
    )
    app[SETTINGS] = settings
    app[STREAMS] = streams
    routes_exec.setup_exec(app)
    app.add_routes(routes_health.routes)
    app.add_routes(routes_watch.routes)
    app.add_routes(routes_agents.routes)
    app.add_routes(routes_secrets.routes)
    app.add_routes(routes_live.routes)
    app.add_routes(routes_exec.routes)
    app.add_routes(routes_files.routes)
    app.add_routes(routes_metrics.routes)
    app.add_routes(routes_usage.routes)
    app.add_routes(routes_apply.routes)
    app.add_routes(openapi.routes)
    app.add_routes(routes_ui.routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            cipher = SecretCipher.load(settings.secret_key_path)
        except (CipherError, OSError) as exc:
            raise StoreUnavailable(f"cannot use the secret key file: {exc}") from exc
        store = await open_store(settings.store, spec_defaults(settings), buffer=settings.watch_buffer, cipher=cipher)
        metrics = Metrics(settings)
        runtime = make_runtime(settings, observer=metrics)
        await runtime.open()
        # With a shared store (PostgreSQL) only the elected leader runs the controller; every process
        # serves the whole API. leader.fence() is checked before each of the controller's runtime writes.
        leader = leader_election(store, settings, f"{settings.host}:{settings.port}")
        metrics.leadership = leader
        controller = Controller(settings, store, runtime, metrics, fence=leader.fence)
        if isinstance(runtime, DockerRuntime):
            runtime.egress.agents = store_lookup(store)
            runtime.egress.on_denied = DenialRecorder(store, metrics.egress_denial)
        hub = WatchHub(store, buffer=settings.watch_buffer)
        await hub.start()
        app[STORE] = store
        app[CONTROLLER] = controller
        app[LEADER] = leader
        app[RUNTIME] = runtime
        # Live views (logs, stats, attach) have their own engine client and connection pool: however many
        # of them are open, the reconciler's calls never wait for a connection.
        app[LIVE] = runtime.live
        app[STATS] = stats = StatsRefresher(store, runtime.live, settings.stats_seconds)
        app[WATCH] = hub
        await metrics.start(store, stats if settings.agent_metrics else None)
        campaign: list[asyncio.Task[None]] = []
        if run_controller:
            await leader.begin(controller.start)
            campaign.append(asyncio.create_task(leader.run(controller.start, controller.stop), name="leader-election"))
            stats.start()
        try:
            yield
        finally:
            await stats.stop()
            await cancel_all(campaign)  # stops the controller if it leads
            await controller.stop()
            await leader.release()
            await metrics.stop()
            await hub.stop()
            await streams.close()
            await runtime.close()
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    setup_compat(app, settings, middlewares)  # /api/*; its own port (PARALLAX_COMPAT_PORT) once the state is up

    async def end_watches(app: web.Application) -> None:
        if WATCH in app:
            app[WATCH].end_listeners()
        streams.end_all()

    app.on_shutdown.append(end_watches)
    app.cleanup_ctx.append(routes_apply.lifecycle(specs_dir))
    return app
