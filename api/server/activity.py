"""An agent's activity, as ``spec.lifecycle``'s idle timer counts it: ``status.lastActivityTime``.

Activity is a send, an exec, a file transfer, a followed log stream (at its start and every
``PARALLAX_ACTIVITY_WRITE_SECONDS`` while it stays open) and ``POST /agents/{name}/keepalive``. The time
is written to the store at most once per ``PARALLAX_ACTIVITY_WRITE_SECONDS`` per agent (per API process):
a log stream or a burst of execs is not a write each; the reconciler allows for an activity written that
late (``controller.reconcile.lifecycle.idle_at``). It is a status write: no new generation, nothing
restarted. With ``wake=True`` (send, exec), a suspended agent whose ``spec.lifecycle.resumeOnActivity`` is
true is resumed first, and the call waits (at most ``PARALLAX_RESUME_WAIT_SECONDS``) until it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import replace

from aiohttp import web

from api.server.errors import ApiError
from api.server.state import SETTINGS, STORE
from controller.model.agent import Agent
from controller.model.timestamps import now_iso
from controller.store.interface import NotFound, Store, StoreError

log = logging.getLogger("parallax.api.activity")

RESUME_POLL_SECONDS = 0.1
FORGET_AFTER = 1024
"""Agents remembered by the throttle before the ones not written lately are forgotten."""

# When each agent's activity was last written, by store (one per application: tests run many).
_written: weakref.WeakKeyDictionary[Store, dict[str, float]] = weakref.WeakKeyDictionary()


async def note_activity(app: web.Application, agent: str, *, wake: bool = False) -> None:
    """Record activity on ``agent`` (``status.lastActivityTime``, throttled). ``wake``: resume it first
    if it is suspended and asks for that (``resumeOnActivity``), waiting until it runs; a 409 (it was
    deleted or suspended again meanwhile) or 503 (it did not come up in time) says why not. ``NotFound``
    for an agent that does not exist when ``wake`` is asked; otherwise an unknown agent is no activity."""
    store, settings = app[STORE], app[SETTINGS]
    if wake:
        await _wake(app, agent)
    written = _written.setdefault(store, {})
    now = time.monotonic()
    last = written.get(agent)
    if last is not None and now - last < settings.activity_write_seconds:
        return
    if len(written) >= FORGET_AFTER:
        for name in [n for n, at in written.items() if now - at >= settings.activity_write_seconds]:
            del written[name]
    written[agent] = now
    try:
        await store.record_activity(agent, now_iso())
    except StoreError as exc:
        written.pop(agent, None)
        log.warning("activity of agent %s not recorded: %s", agent, exc)


async def _wake(app: web.Application, name: str) -> None:
    store, settings = app[STORE], app[SETTINGS]
    agent = await store.get(name)
    lifecycle = agent.spec.lifecycle
    if not agent.spec.suspend or not lifecycle.resume_on_activity or agent.metadata.deletion_timestamp:
        return

    def resume(latest: Agent) -> Agent:
        if not latest.spec.suspend:
            return latest
        return Agent(latest.metadata, replace(latest.spec, suspend=False), latest.status)

    resumed = await store.update(name, resume)
    log.info("agent %s: resumed by activity (spec.lifecycle.resumeOnActivity)", name)
    wait = settings.resume_wait_seconds
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            latest = await store.get(name)
        except NotFound:
            latest = None
        if latest is None or latest.metadata.uid != resumed.metadata.uid or latest.metadata.deletion_timestamp:
            raise ApiError(409, "NOT_RUNNING", f"agent {name!r} was deleted while it was being resumed")
        if latest.spec.suspend:
            raise ApiError(409, "NOT_RUNNING", f"agent {name!r} was suspended again while it was being resumed")
        status = latest.status
        if (
            int(status.get("observedGeneration", 0)) >= resumed.metadata.generation
            and latest.phase in ("Running", "Paused")
            and status.get("containerId")
        ):
            return
        if loop.time() >= deadline:
            error = status.get("error") or {}
            why = f": {error.get('code')}: {error.get('message')}" if error else ""
            raise ApiError(
                503,
                "RESUME_TIMEOUT",
                f"agent {name!r} was resumed (spec.lifecycle.resumeOnActivity) but is not running after "
                f"{wait:g}s (PARALLAX_RESUME_WAIT_SECONDS; phase {latest.phase}{why}); try again",
            )
        await asyncio.sleep(RESUME_POLL_SECONDS)
