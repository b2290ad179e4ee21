"""Typed application state (aiohttp ``AppKey``s) shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from controller.config import Settings
from controller.manager import Controller
from controller.runtime import LiveViews, Runtime
from controller.stats_refresher import StatsRefresher
from controller.store import Store
from controller.watch import WatchHub

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
CONTROLLER = web.AppKey("controller", Controller)
RUNTIME = web.AppKey("runtime", Runtime)
LIVE = web.AppKey("live", LiveViews)
STATS = web.AppKey("stats", StatsRefresher)
WATCH = web.AppKey("watch", WatchHub)
