"""Agent status: conditions with honest transition times, errors with a code and what to do."""

from __future__ import annotations

import copy
from typing import Any

from controller.model.errors import IMAGE_NOT_FOUND, RESOLUTION, SOCKET_ERROR
from controller.reconcile.status import clear_error, set_condition, set_error, with_phase

T0 = "2025-01-01T00:00:00.000000Z"
T1 = "2025-01-01T00:01:00.000000Z"
T2 = "2025-01-01T00:02:00.000000Z"


def ready(status: dict[str, Any]) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = status["conditions"]
    [condition] = [c for c in conditions if c["type"] == "Ready"]
    return condition


def test_new_condition_records_when_it_became_true() -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Ready", True, "Started", "container is running", T0)
    assert status["conditions"] == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Started",
            "message": "container is running",
            "lastTransitionTime": T0,
        }
    ]


def test_transition_time_is_kept_while_the_truth_does_not_change() -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Ready", True, "Started", "running", T0)
    set_condition(status, "Ready", True, "StillRunning", "running fine", T1)
    condition = ready(status)
    assert condition["lastTransitionTime"] == T0
    assert (condition["reason"], condition["message"]) == ("StillRunning", "running fine")


def test_transition_time_moves_when_the_truth_flips() -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Ready", True, "Started", "running", T0)
    set_condition(status, "Ready", False, "Exited", "exited with 1", T1)
    assert ready(status)["lastTransitionTime"] == T1
    assert ready(status)["status"] == "False"
    set_condition(status, "Ready", True, "Started", "running", T2)
    assert ready(status)["lastTransitionTime"] == T2
    assert ready(status)["status"] == "True"


def test_conditions_of_different_types_are_independent() -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Ready", True, "Started", "", T0)
    set_condition(status, "Scheduled", False, "Waiting", "", T1)
    set_condition(status, "Scheduled", True, "Done", "", T2)
    assert len(status["conditions"]) == 2
    assert ready(status)["lastTransitionTime"] == T0


def test_with_phase_sets_the_phase_and_ready_without_touching_the_input() -> None:
    original: dict[str, Any] = {"phase": "Pending", "restartCount": 2}
    snapshot = copy.deepcopy(original)
    new = with_phase(original, "Running", ready=True, reason="Started", message="running", now=T0)
    assert original == snapshot
    assert new["phase"] == "Running"
    assert new["restartCount"] == 2
    assert ready(new)["status"] == "True"


def test_set_error_carries_the_code_and_the_message_with_its_resolution() -> None:
    status = set_error({"phase": "Pending"}, IMAGE_NOT_FOUND, "image parallax/agent-claude:latest is missing", T0)
    error = status["error"]
    assert error["code"] == "IMAGE_NOT_FOUND"
    assert error["message"].startswith("image parallax/agent-claude:latest is missing")
    assert RESOLUTION[IMAGE_NOT_FOUND] in error["message"]
    assert "Build the image" in error["message"]


def test_set_error_marks_the_agent_not_ready_with_the_code_as_reason() -> None:
    status = set_error({}, SOCKET_ERROR, "cannot reach the Docker daemon", T0)
    condition = ready(status)
    assert condition["status"] == "False"
    assert condition["reason"] == "SOCKET_ERROR"
    assert condition["message"] == status["error"]["message"]
    assert "DOCKER_SOCKET" in condition["message"]


def test_set_error_does_not_change_the_input() -> None:
    original: dict[str, Any] = {"phase": "Running"}
    set_error(original, SOCKET_ERROR, "down", T0)
    assert original == {"phase": "Running"}


def test_unknown_error_code_keeps_the_plain_message() -> None:
    assert set_error({}, "SOMETHING_ELSE", "boom", T0)["error"] == {"code": "SOMETHING_ELSE", "message": "boom"}


def test_repeated_error_keeps_the_transition_time() -> None:
    status = with_phase({}, "Running", ready=True, reason="Started", message="", now=T0)
    status = set_error(status, SOCKET_ERROR, "down", T1)
    status = set_error(status, SOCKET_ERROR, "still down", T2)
    assert ready(status)["lastTransitionTime"] == T1


def test_every_seed_error_code_has_a_resolution() -> None:
    for code in ("IMAGE_NOT_FOUND", "NETWORK_ERROR", "RESOURCE_LIMIT", "SOCKET_ERROR"):
        assert RESOLUTION[code]


def test_clear_error_removes_only_the_error() -> None:
    status = set_error({"phase": "Pending"}, SOCKET_ERROR, "down", T0)
    cleared = clear_error(status)
    assert "error" not in cleared
    assert cleared["phase"] == "Pending"
    assert "error" in status
    assert clear_error({"phase": "Running"}) == {"phase": "Running"}
