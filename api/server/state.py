"""Typed application state (aiohttp ``AppKey``s) shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from controller.config import Settings
from controller.observe.stats_refresher import StatsRefresher
from controller.observe.watch import WatchHub
from controller.reconcile.controller import Controller
from controller.runtime.interface import LiveViews, Runtime
from controller.store.interface import Store
from controller.store.lease import Leadership

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
CONTROLLER = web.AppKey("controller", Controller)
RUNTIME = web.AppKey("runtime", Runtime)
LIVE = web.AppKey("live", LiveViews)
STATS = web.AppKey("stats", StatsRefresher)
WATCH = web.AppKey("watch", WatchHub)
LEADER = web.AppKey("leader", Leadership)
