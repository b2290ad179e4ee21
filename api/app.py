"""The aiohttp application: one ``web.Application`` running the API and the controller together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api import openapi, routes_agents, routes_apply, routes_health, routes_live, routes_metrics, routes_watch
from api.auth import auth_middleware
from api.errors import error_middleware
from api.state import CONTROLLER, LIVE, SETTINGS, STATS, STORE, WATCH
from api.throttle import concurrency_middleware
from controller.admission import spec_defaults
from controller.config import Settings
from controller.docker_driver import DockerDriver, LiveDocker
from controller.manager import Controller
from controller.metrics import Metrics
from controller.stats_refresher import StatsRefresher
from controller.store import SqliteStore
from controller.watch import WatchHub

log = logging.getLogger("parallax.api")


def make_app(settings: Settings, *, run_controller: bool = True, specs_dir: str | None = None) -> web.Application:
    app = web.Application(
        # auth before the concurrency limit: a request without the token is refused without taking a slot
        middlewares=[error_middleware, auth_middleware, concurrency_middleware(settings.api_concurrency)],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app.add_routes(routes_health.routes)
    app.add_routes(routes_watch.routes)
    app.add_routes(routes_agents.routes)
    app.add_routes(routes_live.routes)
    app.add_routes(routes_metrics.routes)
    app.add_routes(routes_apply.routes)
    app.add_routes(openapi.routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = SqliteStore(settings.store_path, spec_defaults(settings))
        await store.open()
        metrics = Metrics(settings)
        driver = DockerDriver(settings, observer=metrics)
        await driver.open()
        controller = Controller(settings, store, driver, metrics)
        hub = WatchHub(store)
        await hub.start()
        app[STORE] = store
        app[CONTROLLER] = controller
        app[LIVE] = live = LiveDocker(driver)
        app[STATS] = stats = StatsRefresher(store, live, settings.stats_seconds)
        app[WATCH] = hub
        await metrics.start(store, stats if settings.agent_metrics else None)
        if run_controller:
            await controller.start()
            stats.start()
        try:
            yield
        finally:
            await stats.stop()
            await controller.stop()
            await metrics.stop()
            await hub.stop()
            await driver.close()
            await store.close()

    app.cleanup_ctx.append(lifecycle)

    async def end_watches(app: web.Application) -> None:
        if WATCH in app:
            app[WATCH].end_listeners()

    app.on_shutdown.append(end_watches)
    app.cleanup_ctx.append(routes_apply.lifecycle(specs_dir))
    return app
