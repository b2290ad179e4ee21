"""Log output for ``parallax serve``: readable text, or one JSON object per line for log shippers.

A reconcile runs inside ``reconcile_scope(name)``, which puts the agent's name and a fresh reconcile
id in a context variable; every line logged during that reconcile (by any module, and by tasks it
starts) carries both, so one reconcile's lines can be picked out of an interleaved log.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from controller.model.timestamps import format_time


@dataclass(frozen=True)
class ReconcileContext:
    agent: str
    reconcile_id: str


_current: contextvars.ContextVar[ReconcileContext | None] = contextvars.ContextVar("parallax_reconcile", default=None)


def current_reconcile() -> ReconcileContext | None:
    return _current.get()


@contextlib.contextmanager
def reconcile_scope(agent: str) -> Iterator[ReconcileContext]:
    """Tag every log line inside the block with ``agent`` and a new reconcile id."""
    context = ReconcileContext(agent, uuid.uuid4().hex[:16])
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


class ReconcileContextFilter(logging.Filter):
    """Copies the current reconcile's agent and id onto each record (``None`` outside a reconcile)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        record.agent = context.agent if context else None
        record.reconcile_id = context.reconcile_id if context else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, agent, reconcileID and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": format_time(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        agent = getattr(record, "agent", None)
        if agent:
            entry["agent"] = agent
            entry["reconcileID"] = getattr(record, "reconcile_id", None)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [agent=x reconcile=id]: message``; the bracket only inside a reconcile."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(scope)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        agent = getattr(record, "agent", None)
        record.scope = f" [agent={agent} reconcile={getattr(record, 'reconcile_id', '')}]" if agent else ""
        return super().format(record)


def make_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ReconcileContextFilter())
    return handler


def configure_logging(level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None) -> None:
    """Replace the root logger's handlers with one writing ``log_format`` (``text`` or ``json``)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(log_format, stream))
    root.setLevel(level.upper())
