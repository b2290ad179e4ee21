"""Restart policy and crash-loop backoff, kubelet's numbers, as pure functions of times and state.

First restart is immediate, then 10 s doubling to 300 s; a container that ran for 10 minutes before
exiting starts the sequence again.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL_BACKOFF = 10.0
MAX_BACKOFF = 300.0
RESET_AFTER = 600.0


@dataclass(frozen=True)
class ExitDecision:
    restart: bool
    delay: float = 0.0
    phase: str = "Running"


def should_restart(policy: str, exit_code: int) -> bool:
    if policy == "Never":
        return False
    if policy == "OnFailure":
        return exit_code != 0
    return True


def next_delay(previous_delay: float | None, ran_for_seconds: float) -> float:
    """Backoff before the restart that follows an exit."""
    if previous_delay is None or ran_for_seconds >= RESET_AFTER:
        return 0.0
    if previous_delay <= 0:
        return INITIAL_BACKOFF
    return min(previous_delay * 2, MAX_BACKOFF)


def decide_exit(policy: str, exit_code: int, previous_delay: float | None, ran_for_seconds: float) -> ExitDecision:
    """What an exited container calls for: a terminal phase, or a restart after a delay."""
    if not should_restart(policy, exit_code):
        return ExitDecision(restart=False, phase="Succeeded" if exit_code == 0 else "Failed")
    delay = next_delay(previous_delay, ran_for_seconds)
    return ExitDecision(restart=True, delay=delay, phase="CrashLoopBackOff" if delay > 0 else "Running")
