"""What becomes of a refused egress attempt: always a metric, and an agent event unless it would flood.

An agent looping on a denied host would otherwise write an event per attempt into the store. The event
``EgressDenied`` (message ``host:port ...``) is recorded at most once per ``repeat_seconds`` for the same
agent and destination, and at most ``per_minute`` times a minute per agent; the counter
``parallax_egress_denied_total{reason}`` counts every attempt (no agent label: bounded cardinality).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.model.agent import Agent
from controller.store.interface import Store, StoreError

log = logging.getLogger("parallax.egress")

EVENT_REASON = "EgressDenied"


@dataclass
class DenialLimiter:
    """Which denials become events (pure: the caller passes the time)."""

    repeat_seconds: float = 60.0
    per_minute: int = 10
    _last: dict[tuple[str, str], float] = field(default_factory=dict)
    _recent: dict[str, list[float]] = field(default_factory=dict)

    def admit(self, agent: str, authority: str, now: float) -> bool:
        key = (agent, authority)
        last = self._last.get(key)
        if last is not None and now - last < self.repeat_seconds:
            return False
        recent = [t for t in self._recent.get(agent, []) if now - t < 60.0]
        if len(recent) >= self.per_minute:
            self._recent[agent] = recent
            return False
        recent.append(now)
        self._recent[agent] = recent
        self._last[key] = now
        if len(self._last) > 10_000:  # forget the oldest half: a bounded memory whatever agents try
            for stale in sorted(self._last, key=self._last.__getitem__)[:5_000]:
                del self._last[stale]
        return True


class DenialRecorder:
    """The gateway's ``on_denied``: count, and record the agent's event when the limiter admits it."""

    def __init__(
        self,
        store: Store,
        count: Callable[[str], None],
        limiter: DenialLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.count = count
        self.limiter = limiter or DenialLimiter()
        self.clock = clock

    async def __call__(self, agent: Agent | None, authority: str, reason: str) -> None:
        self.count(reason)
        if agent is None:
            return
        if not self.limiter.admit(agent.name, authority, self.clock()):
            return
        try:
            await self.store.record_event(
                agent, "Warning", EVENT_REASON, f"{authority} is not allowed by the agent's egress policy"
            )
        except StoreError as exc:
            log.debug("egress denial of %s for %s not recorded: %s", authority, agent.name, exc)
