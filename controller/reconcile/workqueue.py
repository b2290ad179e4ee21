"""An asyncio port of client-go's ``util/workqueue``.

The layers follow client-go so its documentation and habits carry over:

* ``WorkQueue`` (queue.go): a FIFO of keys that collapses duplicates and never hands the same key
  to two workers at once.
* ``DelayingQueue`` (delaying_queue.go): adds ``add_after`` for keys that should come back later.
* ``RateLimitingQueue`` (rate_limiting_queue.go): adds ``add_rate_limited`` so failing keys back
  off, using the limiters from default_rate_limiters.go.

Everything runs on one event loop, so no locks are needed; time comes from a ``Clock`` so tests can
drive it with ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from typing import Protocol

from controller.model.clock import Clock, RealClock


class ShutDown(Exception):
    """Raised by ``get()`` once the queue is shutting down, telling a worker to exit."""


class QueueObserver(Protocol):
    """Hooks a metrics layer can implement without the queue knowing about Prometheus."""

    def on_add(self, key: str) -> None: ...

    def on_get(self, key: str, waited_seconds: float) -> None: ...

    def on_done(self, key: str, worked_seconds: float) -> None: ...


class NoopObserver:
    """The default observer: records nothing."""

    def on_add(self, key: str) -> None:
        pass

    def on_get(self, key: str, waited_seconds: float) -> None:
        pass

    def on_done(self, key: str, worked_seconds: float) -> None:
        pass


class WorkQueue:
    """A FIFO of keys with client-go's guarantees.

    * A key added many times before a worker takes it is processed once (``_dirty``).
    * A key is never handed to two workers at once: re-adding a key that is being processed only
      marks it dirty, and ``done()`` queues it again (``_processing``).
    """

    def __init__(self, *, clock: Clock | None = None, observer: QueueObserver | None = None) -> None:
        self._clock: Clock = clock or RealClock()
        self._observer: QueueObserver = observer or NoopObserver()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._added_at: dict[str, float] = {}
        self._started_at: dict[str, float] = {}
        self._has_items = asyncio.Event()
        self._shutting_down = False
        self.adds_total = 0

    def add(self, key: str) -> None:
        """Mark ``key`` as needing work; a no-op if it is already waiting or the queue is shut down."""
        if self._shutting_down or key in self._dirty:
            return
        self.adds_total += 1
        self._added_at.setdefault(key, self._clock.now())
        self._observer.on_add(key)
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._has_items.set()

    async def get(self) -> str:
        """Wait for the next key and mark it as being processed; the caller must call ``done()``."""
        while True:
            if self._shutting_down:
                raise ShutDown
            if self._queue:
                break
            self._has_items.clear()
            await self._has_items.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        now = self._clock.now()
        self._started_at[key] = now
        self._observer.on_get(key, now - self._added_at.pop(key, now))
        return key

    def done(self, key: str) -> None:
        """Finish processing ``key``; if it was added again meanwhile, queue it now."""
        if key not in self._processing:
            return
        self._processing.discard(key)
        started = self._started_at.pop(key)
        self._observer.on_done(key, self._clock.now() - started)
        if key in self._dirty:
            self._queue.append(key)
            self._has_items.set()

    def shut_down(self) -> None:
        """Stop accepting keys and make every current and future ``get()`` raise ``ShutDown``."""
        self._shutting_down = True
        self._has_items.set()

    def is_shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        """Keys queued and ready to hand out (not those being processed)."""
        return len(self._queue)

    def unfinished_work_seconds(self) -> float:
        """Total time spent so far on keys still being processed; growth reveals stuck workers."""
        now = self._clock.now()
        return sum(now - started for started in self._started_at.values())

    def longest_running_processor_seconds(self) -> float:
        """How long the oldest key still being processed has been running."""
        if not self._started_at:
            return 0.0
        return self._clock.now() - min(self._started_at.values())


class DelayingQueue(WorkQueue):
    """A ``WorkQueue`` whose keys can be scheduled to arrive later.

    Waiting keys sit in a heap ordered by ready time. One background task sleeps on the clock until
    the earliest is due, and is woken early when an even earlier key arrives.
    """

    def __init__(self, *, clock: Clock | None = None, observer: QueueObserver | None = None) -> None:
        super().__init__(clock=clock, observer=observer)
        self._waiting: list[tuple[float, int, str]] = []
        self._ready_at: dict[str, float] = {}
        self._seq = itertools.count()
        self._rescheduled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task; ``add_after`` does this itself, so calling it is optional."""
        if self._task is None and not self._shutting_down:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="workqueue-delay")

    def add_after(self, key: str, delay_seconds: float) -> None:
        """Add ``key`` once ``delay_seconds`` have passed; if it is already waiting, the earlier time wins."""
        if self._shutting_down:
            return
        if delay_seconds <= 0:
            self.add(key)
            return
        ready_at = self._clock.now() + delay_seconds
        current = self._ready_at.get(key)
        if current is not None and current <= ready_at:
            return
        self._ready_at[key] = ready_at
        heapq.heappush(self._waiting, (ready_at, next(self._seq), key))
        self.start()
        if self._waiting[0][0] == ready_at:
            self._rescheduled.set()

    def shut_down(self) -> None:
        super().shut_down()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while not self._shutting_down:
            self._rescheduled.clear()
            self._add_ready()
            if self._waiting:
                await self._sleep_or_reschedule(self._waiting[0][0] - self._clock.now())
            else:
                await self._rescheduled.wait()

    def _add_ready(self) -> None:
        now = self._clock.now()
        while self._waiting and self._waiting[0][0] <= now:
            ready_at, _, key = heapq.heappop(self._waiting)
            if self._ready_at.get(key) == ready_at:
                del self._ready_at[key]
                self.add(key)

    async def _sleep_or_reschedule(self, seconds: float) -> None:
        """Sleep on the clock, but return early if ``add_after`` brings in an earlier key."""
        sleeping = asyncio.ensure_future(self._clock.sleep(seconds))
        rescheduled = asyncio.ensure_future(self._rescheduled.wait())
        try:
            await asyncio.wait({sleeping, rescheduled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, rescheduled):
                task.cancel()
            for task in (sleeping, rescheduled):
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class RateLimiter(Protocol):
    """Decides how long a key should wait before it is retried."""

    def when(self, key: str) -> float:
        """Record one more failure for ``key`` and return how many seconds it should wait."""
        ...

    def forget(self, key: str) -> None:
        """Stop tracking ``key``, typically after it succeeded."""
        ...

    def num_requeues(self, key: str) -> int:
        """How many failures have been recorded for ``key`` since it was last forgotten."""
        ...


class ItemExponentialFailureRateLimiter:
    """Per-key exponential backoff: ``base_delay * 2**failures``, capped at ``max_delay``."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 1000.0) -> None:
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        try:
            delay = self._base_delay * 2.0**failures
        except OverflowError:
            return self._max_delay
        return min(delay, self._max_delay)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)


class MaxOfRateLimiter:
    """Combines limiters by waiting as long as the strictest of them asks."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self._limiters = limiters

    def when(self, key: str) -> float:
        return max([limiter.when(key) for limiter in self._limiters])

    def forget(self, key: str) -> None:
        for limiter in self._limiters:
            limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return max(limiter.num_requeues(key) for limiter in self._limiters)


class RateLimitingQueue(DelayingQueue):
    """A ``DelayingQueue`` where failing keys come back after a delay chosen by a ``RateLimiter``."""

    def __init__(
        self,
        rate_limiter: RateLimiter | None = None,
        *,
        clock: Clock | None = None,
        observer: QueueObserver | None = None,
    ) -> None:
        super().__init__(clock=clock, observer=observer)
        self._rate_limiter: RateLimiter = rate_limiter or ItemExponentialFailureRateLimiter()
        self._backoff_until: dict[str, float] = {}
        self.retries_total = 0

    def add_rate_limited(self, key: str) -> None:
        """Add ``key`` again once the rate limiter says it may be retried. Until then the key is backing
        off: unlike client-go, plain ``add`` (any other trigger) waits for that time too, so a stream of
        events about a failing key cannot turn its backoff into a hot loop."""
        if self._shutting_down:
            return
        self.retries_total += 1
        delay = self._rate_limiter.when(key)
        self._backoff_until[key] = self._clock.now() + delay
        self.add_after(key, delay)

    def _backoff_left(self, key: str) -> float:
        until = self._backoff_until.get(key)
        return 0.0 if until is None else until - self._clock.now()

    def add(self, key: str) -> None:
        left = self._backoff_left(key)
        if left > 0:
            self.add_after(key, left)  # already due then: the earlier time wins, so nothing changes
            return
        super().add(key)

    def done(self, key: str) -> None:
        """As ``WorkQueue.done``, but a key added while it was being processed and has failed since waits
        for its backoff instead of being handed out again at once."""
        left = self._backoff_left(key)
        if left > 0 and key in self._dirty and key in self._processing:
            self._dirty.discard(key)
            self._added_at.pop(key, None)
            super().done(key)
            self.add_after(key, left)
            return
        super().done(key)

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff; call this when it was processed successfully."""
        self._rate_limiter.forget(key)
        self._backoff_until.pop(key, None)

    def add_now(self, key: str) -> None:
        """Add ``key`` at once, ending its backoff: for news that may change its outcome (a new desired
        state, the image it was missing), not for echoes of what it already tried."""
        self.forget(key)
        super().add(key)

    def num_requeues(self, key: str) -> int:
        return self._rate_limiter.num_requeues(key)
