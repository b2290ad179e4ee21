"""Typed application state (aiohttp ``AppKey``s) shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from controller.config import Settings
from controller.manager import Controller
from controller.store import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
CONTROLLER = web.AppKey("controller", Controller)
