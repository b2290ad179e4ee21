"""A background sampler of running agents' container stats.

Docker's stats call waits for its collector's next one-second tick, so a request that asked Docker
itself would take up to a second. The refresher keeps the latest sample of every running agent (and
the one before, for the CPU rate); ``GET /agents/{name}/metrics`` answers from it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from controller.model.errors import AgentError
from controller.observe.stats import CpuSample, cpu_sample
from controller.runtime.interface import LiveViews
from controller.store.interface import Store, StoreError
from controller.tasks import cancel_all

log = logging.getLogger("parallax.stats")

CONCURRENCY = 8


@dataclass(frozen=True)
class Sample:
    stats: dict[str, Any]
    previous: CpuSample | None
    taken_at: float  # monotonic


class StatsRefresher:
    def __init__(self, store: Store, live: LiveViews, interval: float) -> None:
        self.store = store
        self.live = live
        self.interval = interval
        self._samples: dict[str, Sample] = {}
        self._task: asyncio.Task[None] | None = None

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
        running = {str(a.status["containerId"]) for a in agents if a.phase == "Running" and a.status.get("containerId")}
        for gone in set(self._samples) - running:
            del self._samples[gone]
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(container_id: str) -> None:
            async with limit:
                with contextlib.suppress(AgentError):
                    stats = await self.live.stats(container_id)
                    if stats.get("cpu_stats"):  # empty while the container is stopping
                        self._keep(container_id, stats)

        await asyncio.gather(*(one(c) for c in running))

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("stats refresh failed")
            await asyncio.sleep(self.interval)
