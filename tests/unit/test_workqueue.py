from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from controller.model.clock import FakeClock
from controller.reconcile.workqueue import (
    DelayingQueue,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimitingQueue,
    ShutDown,
    WorkQueue,
)


async def settle() -> None:
    """Let background tasks run until they block again."""
    for _ in range(10):
        await asyncio.sleep(0)


class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []

    def on_add(self, key: str) -> None:
        self.events.append(("add", key, 0.0))

    def on_get(self, key: str, waited_seconds: float) -> None:
        self.events.append(("get", key, waited_seconds))

    def on_done(self, key: str, worked_seconds: float) -> None:
        self.events.append(("done", key, worked_seconds))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def queue(clock: FakeClock) -> AsyncIterator[RateLimitingQueue]:
    q = RateLimitingQueue(clock=clock)
    yield q
    q.shut_down()
    await settle()


async def test_fake_clock_wakes_sleepers_only_once_their_deadline_passes(clock: FakeClock) -> None:
    woken: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woken.append(name)

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("early", 2))]
    await settle()
    assert clock.sleepers == 2

    clock.advance(1)
    await settle()
    assert woken == []

    clock.advance(4)
    await asyncio.gather(*tasks)
    assert woken == ["early", "late"]
    assert clock.now() == 5


async def test_fake_clock_sleep_zero_returns_without_advancing(clock: FakeClock) -> None:
    await clock.sleep(0)
    await clock.sleep(-1)
    assert clock.sleepers == 0


async def test_keys_come_out_in_fifo_order() -> None:
    q = WorkQueue(clock=FakeClock())
    for key in ("a", "b", "c"):
        q.add(key)

    assert [await q.get() for _ in range(3)] == ["a", "b", "c"]


async def test_key_added_many_times_while_waiting_is_processed_once() -> None:
    q = WorkQueue(clock=FakeClock())
    for _ in range(5):
        q.add("a")
    q.add("b")

    assert len(q) == 2
    assert q.adds_total == 2
    assert await q.get() == "a"
    assert await q.get() == "b"
    assert len(q) == 0


async def test_key_readded_while_processing_is_handed_out_again_only_after_done() -> None:
    q = WorkQueue(clock=FakeClock())
    q.add("a")
    assert await q.get() == "a"

    q.add("a")
    q.add("a")
    assert len(q) == 0
    getter = asyncio.create_task(q.get())
    await settle()
    assert not getter.done()

    q.done("a")
    assert await getter == "a"
    q.done("a")
    assert len(q) == 0


async def test_done_without_readd_does_not_requeue() -> None:
    q = WorkQueue(clock=FakeClock())
    q.add("a")
    await q.get()
    q.done("a")

    assert len(q) == 0


async def test_concurrent_getters_never_get_the_same_key() -> None:
    q = WorkQueue(clock=FakeClock())
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await settle()

    q.add("a")
    q.add("b")
    await settle()
    q.add("a")
    q.add("b")
    await settle()

    handed_out = sorted(g.result() for g in getters if g.done())
    assert handed_out == ["a", "b"]
    idle = next(g for g in getters if not g.done())

    q.done("a")
    assert await idle == "a"


async def test_shut_down_wakes_blocked_getters_with_shutdown() -> None:
    q = WorkQueue(clock=FakeClock())
    getters = [asyncio.create_task(q.get()) for _ in range(2)]
    await settle()

    q.shut_down()
    for getter in getters:
        with pytest.raises(ShutDown):
            await getter
    assert q.is_shutting_down()


async def test_get_after_shut_down_raises_even_with_items_left() -> None:
    q = WorkQueue(clock=FakeClock())
    q.add("a")
    q.shut_down()
    q.add("b")

    with pytest.raises(ShutDown):
        await q.get()
    assert len(q) == 1


async def test_observer_sees_queue_and_work_durations(clock: FakeClock) -> None:
    observer = RecordingObserver()
    q = WorkQueue(clock=clock, observer=observer)
    q.add("a")
    clock.advance(3)
    await q.get()
    clock.advance(2)
    q.done("a")

    assert observer.events == [("add", "a", 0.0), ("get", "a", 3.0), ("done", "a", 2.0)]


async def test_unfinished_and_longest_running_figures_advance_with_the_clock(clock: FakeClock) -> None:
    q = WorkQueue(clock=clock)
    assert q.unfinished_work_seconds() == 0.0
    assert q.longest_running_processor_seconds() == 0.0

    q.add("a")
    q.add("b")
    await q.get()
    clock.advance(4)
    await q.get()
    clock.advance(1)

    assert q.unfinished_work_seconds() == 5.0 + 1.0
    assert q.longest_running_processor_seconds() == 5.0

    q.done("a")
    assert q.unfinished_work_seconds() == 1.0
    assert q.longest_running_processor_seconds() == 1.0


async def test_add_after_is_not_ready_before_the_delay_and_ready_after(clock: FakeClock, queue: DelayingQueue) -> None:
    queue.add_after("a", 5)
    await settle()
    assert clock.sleepers == 1

    clock.advance(4.9)
    await settle()
    assert len(queue) == 0

    clock.advance(0.1)
    await settle()
    assert len(queue) == 1
    assert await queue.get() == "a"


async def test_add_after_without_delay_adds_at_once(queue: DelayingQueue) -> None:
    queue.add_after("a", 0)
    queue.add_after("b", -1)

    assert len(queue) == 2


async def test_earlier_add_after_wins_and_later_one_is_dropped(clock: FakeClock, queue: DelayingQueue) -> None:
    queue.add_after("a", 10)
    await settle()
    queue.add_after("a", 2)
    queue.add_after("a", 7)
    await settle()

    clock.advance(2)
    await settle()
    assert await queue.get() == "a"
    queue.done("a")

    clock.advance(8)
    await settle()
    assert len(queue) == 0


async def test_delayed_keys_arrive_in_ready_order(clock: FakeClock, queue: DelayingQueue) -> None:
    queue.add_after("slow", 3)
    queue.add_after("fast", 1)
    queue.add_after("medium", 2)

    clock.advance(3)
    await settle()

    assert [await queue.get() for _ in range(3)] == ["fast", "medium", "slow"]


async def test_shut_down_stops_the_delay_task(clock: FakeClock) -> None:
    q = DelayingQueue(clock=clock)
    q.add_after("a", 1)
    await settle()

    q.shut_down()
    await settle()
    clock.advance(1)
    await settle()

    assert len(q) == 0
    assert clock.sleepers == 0


def test_exponential_limiter_doubles_per_failure_caps_and_forget_resets() -> None:
    limiter = ItemExponentialFailureRateLimiter(base_delay=0.005, max_delay=0.03)

    assert [limiter.when("a") for _ in range(5)] == [0.005, 0.01, 0.02, 0.03, 0.03]
    assert limiter.num_requeues("a") == 5

    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == 0.005


def test_exponential_limiter_caps_instead_of_overflowing() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    for _ in range(2000):
        delay = limiter.when("a")

    assert delay == 1000.0


def test_max_of_limiter_takes_the_strictest() -> None:
    limiter = MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(base_delay=1, max_delay=100),
        ItemExponentialFailureRateLimiter(base_delay=3, max_delay=5),
    )

    assert [limiter.when("a") for _ in range(4)] == [3, 5, 5, 8]
    assert limiter.num_requeues("a") == 4
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0


async def test_add_rate_limited_delays_grow_per_key_independently(clock: FakeClock) -> None:
    q = RateLimitingQueue(ItemExponentialFailureRateLimiter(base_delay=1, max_delay=60), clock=clock)
    q.add_rate_limited("a")
    q.add_rate_limited("b")
    clock.advance(1)
    await settle()
    assert sorted([await q.get(), await q.get()]) == ["a", "b"]
    q.done("a")
    q.done("b")

    q.add_rate_limited("a")
    q.add_rate_limited("b")
    q.forget("b")
    q.add_rate_limited("b")
    clock.advance(1)
    await settle()
    assert len(q) == 1
    assert await q.get() == "b"

    clock.advance(1)
    await settle()
    assert await q.get() == "a"
    assert q.num_requeues("a") == 2
    assert q.num_requeues("b") == 1
    assert q.retries_total == 5
    q.shut_down()
    await settle()


async def test_rate_limiting_queue_defaults_to_client_go_backoff(clock: FakeClock) -> None:
    q = RateLimitingQueue(clock=clock)
    q.add_rate_limited("a")
    clock.advance(0.004)
    await settle()
    assert len(q) == 0

    clock.advance(0.002)
    await settle()
    assert len(q) == 1
    q.shut_down()
    await settle()


async def test_a_backing_off_key_waits_whatever_adds_it(clock: FakeClock) -> None:
    """Events and resyncs about a failing key (``add``) do not cut its backoff short."""
    q = RateLimitingQueue(ItemExponentialFailureRateLimiter(base_delay=4, max_delay=60), clock=clock)
    q.add_rate_limited("a")
    for _ in range(10):
        q.add("a")
    clock.advance(3.9)
    await settle()
    assert len(q) == 0
    clock.advance(0.2)
    await settle()
    assert len(q) == 1 and await q.get() == "a"
    q.shut_down()
    await settle()


async def test_a_key_added_while_its_reconcile_fails_waits_for_the_backoff(clock: FakeClock) -> None:
    """The hot loop of the defect: the failing reconcile's own echoes re-add the key while it is being
    processed; ``done`` must not hand it out again before the backoff."""
    q = RateLimitingQueue(ItemExponentialFailureRateLimiter(base_delay=4, max_delay=60), clock=clock)
    q.add("a")
    assert await q.get() == "a"
    q.add("a")  # an event during processing
    q.add_rate_limited("a")  # the reconcile failed
    q.done("a")
    assert len(q) == 0
    clock.advance(4.1)
    await settle()
    assert await q.get() == "a"
    q.shut_down()
    await settle()


async def test_add_now_ends_the_backoff_and_forget_resets_it(clock: FakeClock) -> None:
    q = RateLimitingQueue(ItemExponentialFailureRateLimiter(base_delay=4, max_delay=60), clock=clock)
    q.add_rate_limited("a")
    q.add_now("a")  # a new desired state
    assert len(q) == 1 and q.num_requeues("a") == 0
    assert await q.get() == "a"
    q.done("a")
    q.add_rate_limited("b")
    q.forget("b")
    q.add("b")
    assert len(q) == 1
    q.shut_down()
    await settle()
