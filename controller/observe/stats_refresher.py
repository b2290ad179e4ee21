"""A background sampler of running agents' container stats.

Docker's stats call waits for its collector's next one-second tick, so a request that asked Docker
itself would take up to a second. The refresher keeps the latest sample of every running agent (and
the one before, for the CPU rate); ``GET /agents/{name}/metrics`` answers from it at once.

It also keeps, per agent, a short history of the figures it sampled (CPU percent and working-set memory,
``HISTORY_SECONDS`` of them at most), for the dashboard's charts: nothing more is asked of Docker for it.
An agent's history spans its container restarts and goes when the agent is no longer running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from controller.model.errors import AgentError
from controller.observe.stats import CpuSample, cpu_percent, cpu_sample, memory_bytes
from controller.runtime.interface import LiveViews
from controller.store.interface import Store, StoreError
from controller.tasks import cancel_all

log = logging.getLogger("parallax.stats")

CONCURRENCY = 8
HISTORY_SECONDS = 600.0


@dataclass(frozen=True)
class Sample:
    stats: dict[str, Any]
    previous: CpuSample | None
    taken_at: float  # monotonic


@dataclass(frozen=True)
class Point:
    """One sampled moment of an agent: what its charts draw."""

    time: float  # Unix seconds
    container_id: str
    cpu_percent: float | None  # None for a container's first sample: a rate needs two
    memory_bytes: int
    memory_limit_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 3),
            "containerId": self.container_id,
            "cpuPercent": self.cpu_percent,
            "memoryBytes": self.memory_bytes,
            "memoryLimitBytes": self.memory_limit_bytes,
        }


class StatsRefresher:
    def __init__(
        self, store: Store, live: LiveViews, interval: float, history_seconds: float = HISTORY_SECONDS
    ) -> None:
        self.store = store
        self.live = live
        self.interval = interval
        self.history_seconds = history_seconds
        self._samples: dict[str, Sample] = {}
        self._history: dict[str, deque[Point]] = {}
        self._task: asyncio.Task[None] | None = None
        self._refreshed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="stats-refresher")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])

    def latest(self, container_id: str, max_age: float | None = None) -> Sample | None:
        sample = self._samples.get(container_id)
        limit = 2 * self.interval if max_age is None else max_age
        if sample is None or time.monotonic() - sample.taken_at > limit:
            return None
        return sample

    def history(self, agent: str) -> list[Point]:
        """The agent's sampled points of the last ``history_seconds``, oldest first."""
        points = self._history.get(agent)
        if not points:
            return []
        since = time.time() - self.history_seconds
        return [p for p in points if p.time >= since]

    def latest_points(self) -> dict[str, Point]:
        """Every running agent's newest point, by agent name."""
        return {name: points[-1] for name, points in self._history.items() if points}

    async def refreshed(self) -> None:
        """Return after the next refresh round has sampled every running agent."""
        await self._refreshed.wait()

    async def sample(self, container_id: str) -> Sample:
        """Take a sample now (used when the refresher has none yet for this container)."""
        stats = await self.live.stats(container_id)
        return self._keep(container_id, stats)

    def _keep(self, container_id: str, stats: dict[str, Any]) -> Sample:
        before = self._samples.get(container_id)
        sample = Sample(stats, cpu_sample(before.stats) if before else None, time.monotonic())
        self._samples[container_id] = sample
        return sample

    async def refresh(self) -> None:
        try:
            agents = await self.store.list()
        except StoreError as exc:
            log.debug("stats refresh skipped: %s", exc)
            return
        by_container = {
            str(a.status["containerId"]): a.name for a in agents if a.phase == "Running" and a.status.get("containerId")
        }
        running = set(by_container)
        for gone in set(self._samples) - running:
            del self._samples[gone]
        for name in set(self._history) - set(by_container.values()):
            del self._history[name]
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(container_id: str) -> None:
            async with limit:
                with contextlib.suppress(AgentError):
                    stats = await self.live.stats(container_id)
                    if stats.get("cpu_stats"):  # empty while the container is stopping
                        self._remember(by_container[container_id], container_id, self._keep(container_id, stats))

        await asyncio.gather(*(one(c) for c in running))
        self._refreshed.set()
        self._refreshed = asyncio.Event()

    def _remember(self, agent: str, container_id: str, sample: Sample) -> None:
        points = self._history.get(agent)
        if points is None:
            points = self._history[agent] = deque(maxlen=int(self.history_seconds / self.interval) + 2)
        stats = sample.stats
        # the rate between two samples only: a container's average since its start is not a point in time
        cpu = cpu_percent(sample.previous, cpu_sample(stats), 0.0) if sample.previous is not None else None
        points.append(
            Point(
                time.time(),
                container_id,
                cpu,
                memory_bytes(stats),
                int((stats.get("memory_stats") or {}).get("limit") or 0),
            )
        )

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("stats refresh failed")
            await asyncio.sleep(self.interval)
