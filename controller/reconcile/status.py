"""Building an Agent's status: phase, conditions and error, with stable transition times."""

from __future__ import annotations

import copy
from typing import Any

from controller.model.errors import RESOLUTION


def set_condition(status: dict[str, Any], type_: str, value: bool, reason: str, message: str, now: str) -> None:
    """Set a condition; ``lastTransitionTime`` moves only when the condition's truth changes."""
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    text = "True" if value else "False"
    for condition in conditions:
        if condition["type"] == type_:
            if condition["status"] != text:
                condition["lastTransitionTime"] = now
            condition.update(status=text, reason=reason, message=message)
            return
    conditions.append({"type": type_, "status": text, "reason": reason, "message": message, "lastTransitionTime": now})


def with_phase(
    status: dict[str, Any], phase: str, *, ready: bool, reason: str, message: str, now: str
) -> dict[str, Any]:
    new = copy.deepcopy(status)
    new["phase"] = phase
    set_condition(new, "Ready", ready, reason, message, now)
    return new


def set_error(status: dict[str, Any], code: str, message: str, now: str) -> dict[str, Any]:
    new = copy.deepcopy(status)
    resolution = RESOLUTION.get(code, "")
    new["error"] = {"code": code, "message": f"{message.rstrip('.')}. {resolution}" if resolution else message}
    set_condition(new, "Ready", False, code, new["error"]["message"], now)
    return new


def clear_error(status: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(status)
    new.pop("error", None)
    return new
