"""Restart policy and kubelet-style crash-loop backoff, as pure decisions."""

from __future__ import annotations

import pytest

from controller.reconcile.restarts import (
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    RESET_AFTER,
    decide_exit,
    next_delay,
    should_restart,
)


@pytest.mark.parametrize(
    ("policy", "exit_code", "restart"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("Always", 137, True),
        ("OnFailure", 0, False),
        ("OnFailure", 1, True),
        ("OnFailure", 137, True),
        ("Never", 0, False),
        ("Never", 1, False),
        ("Never", 137, False),
    ],
)
def test_restart_policy_decides_whether_an_exit_is_restarted(policy: str, exit_code: int, restart: bool) -> None:
    assert should_restart(policy, exit_code) is restart


def test_kubelet_numbers() -> None:
    assert (INITIAL_BACKOFF, MAX_BACKOFF, RESET_AFTER) == (10.0, 300.0, 600.0)


def test_backoff_sequence_is_immediate_then_doubles_from_10s_up_to_300s() -> None:
    delays: list[float] = []
    previous: float | None = None
    for _ in range(8):
        previous = next_delay(previous, ran_for_seconds=1.0)
        delays.append(previous)
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


def test_backoff_stays_capped_at_300s() -> None:
    assert next_delay(300.0, 5.0) == 300.0
    assert next_delay(250.0, 5.0) == 300.0


@pytest.mark.parametrize("previous", [0.0, 10.0, 160.0, 300.0])
def test_backoff_resets_after_ten_minutes_of_running(previous: float) -> None:
    assert next_delay(previous, ran_for_seconds=600.0) == 0.0
    assert next_delay(previous, ran_for_seconds=3600.0) == 0.0


def test_backoff_does_not_reset_just_short_of_ten_minutes() -> None:
    assert next_delay(160.0, ran_for_seconds=599.9) == 300.0


def test_after_a_reset_the_sequence_starts_over() -> None:
    reset = next_delay(300.0, ran_for_seconds=900.0)
    assert reset == 0.0
    assert next_delay(reset, ran_for_seconds=1.0) == 10.0


def test_first_exit_is_restarted_immediately_and_stays_running() -> None:
    decision = decide_exit("Always", 1, previous_delay=None, ran_for_seconds=1.0)
    assert decision.restart is True
    assert decision.delay == 0.0
    assert decision.phase == "Running"


def test_repeated_crash_goes_into_crash_loop_backoff() -> None:
    decision = decide_exit("Always", 1, previous_delay=0.0, ran_for_seconds=1.0)
    assert decision.restart is True
    assert decision.delay == 10.0
    assert decision.phase == "CrashLoopBackOff"


def test_always_restarts_a_clean_exit_too() -> None:
    decision = decide_exit("Always", 0, previous_delay=None, ran_for_seconds=5.0)
    assert decision.restart is True


def test_never_with_exit_zero_succeeds() -> None:
    decision = decide_exit("Never", 0, previous_delay=None, ran_for_seconds=5.0)
    assert (decision.restart, decision.phase) == (False, "Succeeded")


def test_never_with_a_failure_fails() -> None:
    decision = decide_exit("Never", 1, previous_delay=None, ran_for_seconds=5.0)
    assert (decision.restart, decision.phase) == (False, "Failed")


def test_on_failure_with_exit_zero_succeeds_without_restart() -> None:
    decision = decide_exit("OnFailure", 0, previous_delay=40.0, ran_for_seconds=5.0)
    assert (decision.restart, decision.phase) == (False, "Succeeded")


def test_on_failure_restarts_a_failure_with_backoff() -> None:
    decision = decide_exit("OnFailure", 2, previous_delay=40.0, ran_for_seconds=5.0)
    assert (decision.restart, decision.delay, decision.phase) == (True, 80.0, "CrashLoopBackOff")


def test_oom_kill_under_never_is_a_failure() -> None:
    assert decide_exit("Never", 137, previous_delay=None, ran_for_seconds=1.0).phase == "Failed"
