"""Activity of an agent (exec, file transfers, send, followed logs, keepalive) and waking it on activity."""

from __future__ import annotations

from aiohttp import web


async def note_activity(app: web.Application, agent: str, *, wake: bool = False) -> None:
    """Record activity on ``agent`` (``status.lastActivityTime``); with ``wake``, resume a suspended agent
    whose ``spec.lifecycle.resumeOnActivity`` is true and wait, bounded, until it runs.

    The lifecycle branch implements this; here it does nothing, so that exec and files work alone."""
