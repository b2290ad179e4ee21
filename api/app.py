"""The aiohttp application: one ``web.Application`` running the API and the controller together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api import routes_agents, routes_health, routes_live, routes_watch
from api.errors import error_middleware
from api.state import CONTROLLER, LIVE, SETTINGS, STATS, STORE, WATCH
from controller.admission import spec_defaults
from controller.config import Settings
from controller.docker_driver import DockerDriver, LiveDocker
from controller.manager import Controller
from controller.stats_refresher import StatsRefresher
from controller.store import SqliteStore
from controller.watch import WatchHub

log = logging.getLogger("parallax.api")


def make_app(settings: Settings, *, run_controller: bool = True) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.add_routes(routes_health.routes)
    app.add_routes(routes_watch.routes)
    app.add_routes(routes_agents.routes)
    app.add_routes(routes_live.routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = SqliteStore(settings.store_path, spec_defaults(settings))
        await store.open()
        driver = DockerDriver(settings)
        await driver.open()
        controller = Controller(settings, store, driver)
        hub = WatchHub(store)
        await hub.start()
        app[STORE] = store
        app[CONTROLLER] = controller
        app[LIVE] = live = LiveDocker(driver)
        app[STATS] = stats = StatsRefresher(store, live, settings.stats_seconds)
        app[WATCH] = hub
        if run_controller:
            await controller.start()
            stats.start()
        try:
            yield
        finally:
            await stats.stop()
            await controller.stop()
            await hub.stop()
            await driver.close()
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
