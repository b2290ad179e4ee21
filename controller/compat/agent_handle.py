"""An Agent record as the control plane's ``AgentHandle`` (``packages/runtime-interface/src/types.ts``),
and a change of one as the runtime events its client listens for (``agent_started``, ``agent_ready``,
``login_required``, ``agent_error``, ``agent_stopped``).

Works on the redacted manifest (``Agent.to_manifest()``, or a watch item's object), so the same function
serves a list, a read and the event stream; nothing in a handle comes from env values.

The status of a handle, from the record's phase and conditions (first match wins):

=================================================  ================  ====================================
record                                             ``status``        ``error``
=================================================  ================  ====================================
``metadata.deletionTimestamp`` set (Terminating)   ``stopping``
Running, ``Ready`` reason ``NeedsCredentials``     ``authenticating``  what the image says it needs
Running                                            ``ready``         ``status.error`` if any
Pending with ``status.error`` IMAGE_NOT_FOUND      ``pending``       the code and what to do
Pending with any other ``status.error``            ``error``         the code and what to do
Pending                                            ``starting``
CrashLoopBackOff, Failed                           ``error``         the exit, or ``status.error``
Succeeded, Suspended, Paused                       ``stopped``
=================================================  ================  ====================================

``busy`` is never reported: the runtime does not know when an agent is working on a message.
``exitCode`` is the last exit's (``status.lastState``) for ``error`` and ``stopped``.
"""

from __future__ import annotations

import json
from typing import Any

from controller.compat.agent_config import ANNOTATION_CAPABILITIES, ANNOTATION_NAME, ANNOTATION_ROLE
from controller.model.errors import IMAGE_NOT_FOUND
from controller.model.timestamps import format_time, parse_runtime_time

STATUSES = ("pending", "starting", "authenticating", "ready", "busy", "stopping", "stopped", "error")
ACTIVE_STATUSES = frozenset({"starting", "authenticating", "ready", "busy"})
HANDLE_KEYS = frozenset(
    {
        "id",
        "name",
        "type",
        "status",
        "endpoint",
        "pid",
        "containerId",
        "podName",
        "role",
        "capabilities",
        "startedAt",
        "lastActivityAt",
        "error",
        "exitCode",
    }
)


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in status.get("conditions") or ():
        if condition.get("type") == type_:
            return dict(condition)
    return {}


def _error_text(status: dict[str, Any]) -> str | None:
    error = status.get("error")
    if not isinstance(error, dict):
        return None
    return f"{error.get('code')}: {error.get('message')}"


def status_of(manifest: dict[str, Any]) -> tuple[str, str | None]:
    """The handle's ``status`` and ``error`` for a record (the table above)."""
    status = manifest.get("status") or {}
    if (manifest.get("metadata") or {}).get("deletionTimestamp"):
        return "stopping", None
    phase = status.get("phase", "Pending")
    error = _error_text(status)
    ready = _condition(status, "Ready")
    if phase == "Running":
        if ready.get("reason") == "NeedsCredentials":
            return "authenticating", str(ready.get("message") or "needs credentials")
        return "ready", error
    if phase == "Pending":
        if error is None:
            return "starting", None
        code = (status.get("error") or {}).get("code")
        return ("pending" if code == IMAGE_NOT_FOUND else "error"), error
    if phase in ("CrashLoopBackOff", "Failed"):
        return "error", error or str(ready.get("message") or phase)
    if phase in ("Succeeded", "Suspended", "Paused"):
        return "stopped", None
    if phase == "Terminating":
        return "stopping", None
    return "error", error or f"unknown phase {phase}"


def _time(value: Any) -> str | None:
    moment = parse_runtime_time(value) if isinstance(value, str) else None
    return format_time(moment) if moment is not None else None


def handle_of(manifest: dict[str, Any], *, last_activity: str | None = None) -> dict[str, Any]:
    """The ``AgentHandle`` of a record (its redacted manifest). ``last_activity``: when a message was
    last sent to it through this server, if ever."""
    metadata = manifest.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    status = manifest.get("status") or {}
    state, error = status_of(manifest)
    try:
        capabilities = json.loads(annotations.get(ANNOTATION_CAPABILITIES, "[]"))
    except ValueError:
        capabilities = []
    if not isinstance(capabilities, list):
        capabilities = []
    handle: dict[str, Any] = {
        "id": metadata["name"],
        "name": annotations.get(ANNOTATION_NAME, metadata["name"]),
        "type": (manifest.get("spec") or {}).get("type"),
        "status": state,
        "capabilities": [str(c) for c in capabilities],
    }
    optional = {
        "containerId": status.get("containerId") or None,
        "role": annotations.get(ANNOTATION_ROLE),
        "startedAt": _time(status.get("startedAt")) if state not in ("pending", "starting") else None,
        "lastActivityAt": last_activity,
        "error": error,
    }
    last = status.get("lastState") or {}
    if state in ("error", "stopped") and isinstance(last.get("exitCode"), int):
        optional["exitCode"] = last["exitCode"]
    handle.update({k: v for k, v in optional.items() if v is not None})
    return handle


def _stop_reason(handle: dict[str, Any]) -> str:
    if "exitCode" in handle:
        return f"exited with code {handle['exitCode']}"
    return "stopped"


def runtime_events(before: dict[str, Any] | None, after: dict[str, Any], *, deleted: bool) -> list[tuple[str, Any]]:
    """The runtime events (``types.ts`` ``RuntimeEvent``, as the runtime server sends them: ``(event,
    data)``) that the change of a handle from ``before`` (None: not seen before) to ``after`` means.
    ``deleted``: the record is gone (its container stopped and removed)."""
    previous = before["status"] if before is not None else None
    if deleted:
        if previous == "stopped":
            return []
        return [("agent_stopped", {"agent": {**after, "status": "stopped"}, "reason": "deleted"})]
    events: list[tuple[str, Any]] = []
    started = after.get("startedAt")
    if started and started != (before or {}).get("startedAt") and after["status"] != "stopping":
        events.append(("agent_started", {"agent": after}))
    state = after["status"]
    changed = state != previous
    if state == "ready" and changed:
        events.append(("agent_ready", {"agent": after}))
    elif state == "authenticating" and changed:
        events.append(("login_required", {"agent": after, "loginInstructions": after.get("error")}))
    elif state == "error" and changed:
        events.append(("agent_error", {"agent": after, "error": after.get("error") or "error"}))
    elif state == "stopped" and changed:
        events.append(("agent_stopped", {"agent": after, "reason": _stop_reason(after)}))
    return events
