"""The aiohttp application: one ``web.Application`` running the API and the controller together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api import routes_agents, routes_health
from api.errors import error_middleware
from api.state import CONTROLLER, SETTINGS, STORE
from controller.admission import spec_defaults
from controller.config import Settings
from controller.docker_driver import DockerDriver
from controller.manager import Controller
from controller.store import SqliteStore

log = logging.getLogger("parallax.api")


def make_app(settings: Settings, *, run_controller: bool = True) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.add_routes(routes_health.routes)
    app.add_routes(routes_agents.routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = SqliteStore(settings.store_path, spec_defaults(settings))
        await store.open()
        driver = DockerDriver(settings)
        await driver.open()
        controller = Controller(settings, store, driver)
        app[STORE] = store
        app[CONTROLLER] = controller
        if run_controller:
            await controller.start()
        try:
            yield
        finally:
            await controller.stop()
            await driver.close()
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
