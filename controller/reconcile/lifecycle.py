"""``spec.lifecycle`` as pure functions of the record and the time: when a deadline falls, whether it has.

Every timer is a deadline computed from times stored on the agent's status, never an in-memory timer, so
a controller that restarts (or a new leader) enforces the same ones:

- ``status.activeSince``: when the agent's current run began (its first start, or its start after a
  resume from suspension; restarts after a crash do not move it). ``activeDeadlineSeconds`` counts from it.
- ``status.lastActivityTime``: the last send, exec, file transfer, followed log stream or keepalive
  (written by the API, throttled). ``idleTimeoutSeconds`` counts from the later of it and ``activeSince``.
- ``status.finishedAt``: when the agent became Succeeded or Failed. ``ttlSecondsAfterFinished`` counts
  from it.

A paused agent (``spec.paused``) is not idle: its idle timer does not run while it is paused, and thawing
it counts as activity. Its active deadline does run (the deadline bounds the run's wall-clock time).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from controller.model.agent import ANNOTATION_RESTARTED_AT, Agent
from controller.model.timestamps import parse_time

DEADLINE_EXCEEDED = "DeadlineExceeded"
FINISHED_PHASES = ("Succeeded", "Failed")


def stored_time(status: dict[str, Any], key: str) -> datetime | None:
    raw = status.get(key)
    if not raw:
        return None
    try:
        return parse_time(str(raw))
    except ValueError:
        return None


def ended(agent: Agent, status: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the run ended by its deadline (``status.ended``), while it holds: until the spec
    changes (a new generation) or ``POST /agents/{name}/restart``."""
    mark = status.get("ended")
    if not isinstance(mark, dict):
        return None
    if mark.get("generation") != agent.metadata.generation or mark.get("restartedAt") != agent.metadata.annotations.get(
        ANNOTATION_RESTARTED_AT
    ):
        return None
    return mark


def ended_mark(agent: Agent, stamp: str) -> dict[str, Any]:
    return {
        "reason": DEADLINE_EXCEEDED,
        "at": stamp,
        "generation": agent.metadata.generation,
        "restartedAt": agent.metadata.annotations.get(ANNOTATION_RESTARTED_AT),
    }


def deadline_at(agent: Agent, status: dict[str, Any]) -> datetime | None:
    """When the current run's ``activeDeadlineSeconds`` ends (None: no deadline, or no run)."""
    seconds = agent.spec.lifecycle.active_deadline_seconds
    since = stored_time(status, "activeSince")
    if seconds is None or since is None:
        return None
    return since + timedelta(seconds=seconds)


def idle_at(agent: Agent, status: dict[str, Any], grace: float = 0.0) -> datetime | None:
    """When a running agent becomes idle (None: no idle timeout, or it does not run unpaused). ``grace``
    is how late the API may write an activity (``PARALLAX_ACTIVITY_WRITE_SECONDS``): an agent is never
    taken for idle early because its last activity was not written yet."""
    seconds = agent.spec.lifecycle.idle_timeout_seconds
    since = stored_time(status, "activeSince")
    if seconds is None or since is None or agent.spec.paused or agent.spec.suspend:
        return None
    active = stored_time(status, "lastActivityTime")
    base = max(since, active) if active is not None else since
    return base + timedelta(seconds=seconds + grace)


def expires_at(agent: Agent, status: dict[str, Any]) -> datetime | None:
    """When a finished (Succeeded or Failed) agent is deleted by ``ttlSecondsAfterFinished``."""
    seconds = agent.spec.lifecycle.ttl_seconds_after_finished
    finished = stored_time(status, "finishedAt")
    if seconds is None or finished is None or status.get("phase") not in FINISHED_PHASES:
        return None
    return finished + timedelta(seconds=seconds)


def next_timer(agent: Agent, status: dict[str, Any], now: datetime, idle_grace: float = 0.0) -> float | None:
    """Seconds until the next of the agent's lifecycle deadlines (at least a little: never a busy loop)."""
    moments = [
        m
        for m in (
            None if ended(agent, status) else deadline_at(agent, status),
            idle_at(agent, status, idle_grace) if status.get("phase") == "Running" else None,
            expires_at(agent, status),
        )
        if m is not None
    ]
    if not moments:
        return None
    return max((min(moments) - now).total_seconds(), 0.05)
