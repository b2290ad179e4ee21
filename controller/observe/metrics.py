"""Prometheus metrics of one controller, in its own registry (``GET /metrics`` renders it).

Three kinds of series, three ways of keeping them:

* counted as things happen: reconciles and their duration (the manager's workers), the work queue
  (``Metrics`` is the queue's ``QueueObserver``), Docker API calls and events (the driver's
  ``DockerObserver``). The names are controller-runtime's and client-go's, so existing dashboards work.
* followed from the store's change feed by ``AgentTracker``: agents by phase and type, restarts by
  reason, and how long an accepted spec took to have its container running.
* per-agent cpu and memory, the only series with the agent's name as a label: read from the latest
  samples of the background stats sampler (``StatsRefresher``), never fetched while a scrape waits,
  and left out with ``PARALLAX_AGENT_METRICS=off``.

A scrape only reads what is already in memory, so its cost does not depend on Docker or the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
import tomllib
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector

from controller.config import Settings
from controller.model.agent import PHASES, TYPES, Agent
from controller.model.errors import RESOLUTION
from controller.model.timestamps import parse_time
from controller.observe.stats import cpu_sample, memory_bytes
from controller.store.interface import Change, CutOff, Store, StoreError, Subscription
from controller.tasks import cancel_all

log = logging.getLogger("parallax.metrics")

# No ``*_created`` series beside every counter and histogram: controller-runtime exports none, and they
# double the series a scrape carries for nothing a dashboard or an alert here uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTROLLER_NAME = "agent"
"""The ``controller`` / ``name`` label value, as controller-runtime names a controller after its kind."""

RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0,
    40.0, 50.0, 60.0,
)  # fmt: skip
"""controller-runtime's buckets for ``controller_runtime_reconcile_time_seconds``."""
WORKQUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(12))
"""client-go's ``ExponentialBuckets(10e-9, 10, 12)``: 10 ns to 1000 s."""
DOCKER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RESTART_REASONS = ("Error", "Completed", "OOMKilled")
GC_KINDS = ("container", "network")
EVENT_TYPES = ("container", "network", "image")
RECONCILE_RESULTS = ("success", "error", "requeue", "requeue_after")


class WatchedQueue(Protocol):
    """What the metrics read from the work queue at scrape time."""

    retries_total: int

    def unfinished_work_seconds(self) -> float: ...

    def longest_running_processor_seconds(self) -> float: ...


def reconcile_result(requeue_after: float | None) -> str:
    """controller-runtime's ``result`` label for a reconcile that returned without an error."""
    if requeue_after is None:
        return "success"
    return "requeue_after" if requeue_after > 0 else "requeue"


# --- the store's change feed ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    uid: str
    resource_version: int
    generation: int
    phase: str
    type: str
    restart_count: int
    container_id: str | None = None
    accepted_at: float | None = None
    """Wall-clock time a spec (generation ``accepted_generation``) was accepted and still waits to run."""
    accepted_generation: int = 0
    accepted_container: str | None = None
    accepted_started: str | None = None


class AgentTracker:
    """Follows the store's changes: phase/type counts, restarts by reason, spec-to-running time.

    Pure: ``seed`` and ``apply`` take agents and times and call ``on_restart`` / ``on_started``.
    Changes older than what is already known (by resourceVersion) are ignored, so subscribing first
    and listing second loses nothing and double-counts nothing.
    """

    def __init__(
        self,
        on_restart: Callable[[str, int], None] = lambda reason, count: None,
        on_started: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._on_restart = on_restart
        self._on_started = on_started
        self._agents: dict[str, _Seen] = {}

    def seed(self, agents: Iterable[Agent], now: float) -> None:
        for agent in agents:
            known = self._agents.get(agent.name)
            if known is not None and known.resource_version >= agent.metadata.resource_version:
                continue
            seen = _snapshot(agent)
            observed = int(agent.status.get("observedGeneration") or 0)
            created = agent.metadata.creation_timestamp
            if agent.metadata.generation == 1 and observed == 0 and created and agent.phase == "Pending":
                seen = replace(seen, accepted_at=_epoch(created, now), accepted_generation=1)
            self._agents[agent.name] = seen

    def resync(self, agents: Iterable[Agent], now: float) -> None:
        """``seed`` after changes were missed: agents that are no longer listed are forgotten too."""
        agents = list(agents)
        listed = {agent.name for agent in agents}
        for name in [name for name in self._agents if name not in listed]:
            del self._agents[name]
        self.seed(agents, now)

    def apply(self, change: Change, now: float) -> None:
        agent = change.agent
        old = self._agents.get(agent.name)
        if old is not None and agent.metadata.resource_version <= old.resource_version:
            return
        if change.type == "DELETED":
            self._agents.pop(agent.name, None)
            return
        if old is not None and old.uid != agent.metadata.uid:
            old = None
        new = _snapshot(agent)
        if old is not None:
            new = replace(
                new,
                accepted_at=old.accepted_at,
                accepted_generation=old.accepted_generation,
                accepted_container=old.accepted_container,
                accepted_started=old.accepted_started,
            )
            if new.restart_count > old.restart_count:
                reason = str((agent.status.get("lastState") or {}).get("reason") or "Unknown")
                self._on_restart(reason, new.restart_count - old.restart_count)
        if (old is None and change.type == "ADDED") or (old is not None and new.generation > old.generation):
            new = replace(
                new,
                accepted_at=now,
                accepted_generation=new.generation,
                accepted_container=agent.status.get("containerId"),
                accepted_started=agent.status.get("startedAt"),
            )
        self._agents[agent.name] = self._settle(new, agent, now)

    def _settle(self, seen: _Seen, agent: Agent, now: float) -> _Seen:
        """Observe the start time once the accepted spec's container runs; forget it if none will start."""
        if seen.accepted_at is None:
            return seen
        status = agent.status
        if int(status.get("observedGeneration") or 0) < seen.accepted_generation:
            return seen
        done = replace(seen, accepted_at=None, accepted_container=None, accepted_started=None)
        if agent.metadata.deletion_timestamp is not None or seen.phase in ("Suspended", "Paused", "Terminating"):
            return done
        if seen.phase != "Running":
            return seen
        if status.get("startedAt") != seen.accepted_started:
            self._on_started(max(0.0, now - seen.accepted_at))
            return done
        if status.get("containerId") == seen.accepted_container:
            return done  # the spec change kept the running container: nothing was started
        return seen  # a new container is recorded but not started yet

    def running_containers(self) -> list[tuple[str, str]]:
        """(agent, container id) of every Running agent, by name."""
        return sorted(
            (name, seen.container_id)
            for name, seen in self._agents.items()
            if seen.phase == "Running" and seen.container_id
        )

    def phase_counts(self) -> Tally[tuple[str, str]]:
        return Tally((seen.phase, seen.type) for seen in self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)


def _snapshot(agent: Agent) -> _Seen:
    return _Seen(
        uid=agent.metadata.uid,
        resource_version=agent.metadata.resource_version,
        generation=agent.metadata.generation,
        phase=agent.phase,
        type=agent.spec.type,
        restart_count=int(agent.status.get("restartCount") or 0),
        container_id=agent.status.get("containerId"),
    )


def _epoch(iso: str, default: float) -> float:
    try:
        return parse_time(iso).timestamp()
    except ValueError:
        return default


# --- per-agent usage ----------------------------------------------------------------------------------


class StatsSample(Protocol):
    @property
    def stats(self) -> dict[str, Any]: ...


class UsageSource(Protocol):
    """The background stats sampler (``StatsRefresher``): the latest Docker stats of a container, if fresh."""

    def latest(self, container_id: str, max_age: float | None = None) -> StatsSample | None: ...


def agent_usage(stats: dict[str, Any]) -> tuple[float, float]:
    """CPU seconds used so far and working-set bytes, from one Docker stats sample."""
    return cpu_sample(stats).container_total_ns / 1e9, float(memory_bytes(stats))


# --- the registry -------------------------------------------------------------------------------------


class LeaderState(Protocol):
    @property
    def leading(self) -> bool: ...

    transitions: int


class _ScrapeTimeCollector:
    """Series read from in-memory state when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        agents = GaugeMetricFamily("parallax_agents", "Agents by phase and type.", labels=["phase", "type"])
        counts = m.tracker.phase_counts()
        for phase in PHASES:
            for type_ in TYPES:
                agents.add_metric([phase, type_], counts.get((phase, type_), 0))
        yield agents

        up = GaugeMetricFamily("parallax_docker_up", "1 when the Docker daemon answered the last call, else 0.")
        up.add_metric([], 1.0 if m.docker_up() else 0.0)
        yield up

        queue = m.queue
        labels = ["controller", "name"]
        values = [CONTROLLER_NAME, CONTROLLER_NAME]
        retries = CounterMetricFamily(
            "workqueue_retries_total", "Total number of retries handled by workqueue", labels=labels
        )
        unfinished = GaugeMetricFamily(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed by "
            "work_duration. Large values indicate stuck threads.",
            labels=labels,
        )
        longest = GaugeMetricFamily(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            labels=labels,
        )
        retries.add_metric(values, queue.retries_total if queue is not None else 0)
        unfinished.add_metric(values, queue.unfinished_work_seconds() if queue is not None else 0.0)
        longest.add_metric(values, queue.longest_running_processor_seconds() if queue is not None else 0.0)
        yield retries
        yield unfinished
        yield longest

        # client-go's leader election series (its name label is the lease's)
        lead = m.leadership
        master = GaugeMetricFamily(
            "leader_election_master_status",
            "1 while this process leads (holds the controller lease), else 0.",
            labels=["name"],
        )
        master.add_metric(["parallax-controller"], 1.0 if lead is not None and lead.leading else 0.0)
        yield master
        changes = CounterMetricFamily(
            "leader_election_transitions",
            "Times this process started or stopped leading.",
            labels=["name"],
        )
        changes.add_metric(["parallax-controller"], float(lead.transitions) if lead is not None else 0.0)
        yield changes

        if m.usage is not None:
            cpu = CounterMetricFamily(
                "parallax_agent_cpu_seconds", "CPU time used by the agent's container.", labels=["agent"]
            )
            memory_family = GaugeMetricFamily(
                "parallax_agent_memory_bytes",
                "Memory used by the agent's container, without inactive page cache (as docker stats).",
                labels=["agent"],
            )
            for agent, container_id in m.tracker.running_containers():
                sample = m.usage.latest(container_id)
                if sample is not None:
                    cpu_seconds, memory = agent_usage(sample.stats)
                    cpu.add_metric([agent], cpu_seconds)
                    memory_family.add_metric([agent], memory)
            yield cpu
            yield memory_family


class Metrics:
    """The controller's registry, plus the observer hooks the queue, driver and workers report to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        r = self.registry
        ctl = ["controller"]
        wq = ["controller", "name"]
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            [*ctl, "result"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            ctl,
            registry=r,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ctl,
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.max_concurrent = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            ctl,
            registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers", "Number of currently used workers per controller", ctl, registry=r
        )
        self.depth = Gauge("workqueue_depth", "Current depth of workqueue", wq, registry=r)
        self.adds = Counter("workqueue_adds_total", "Total number of adds handled by workqueue", wq, registry=r)
        self.queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            wq,
            buckets=WORKQUEUE_BUCKETS,
            registry=r,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            wq,
            buckets=WORKQUEUE_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "parallax_agent_restarts_total",
            "Container restarts made by the controller, by the exit's reason.",
            ["reason"],
            registry=r,
        )
        self.start_seconds = Histogram(
            "parallax_agent_start_seconds",
            "Seconds from a spec being accepted by the API to its container running.",
            buckets=START_BUCKETS,
            registry=r,
        )
        self.docker_seconds = Histogram(
            "parallax_docker_api_seconds",
            "Docker Engine API calls by driver operation.",
            ["operation"],
            buckets=DOCKER_BUCKETS,
            registry=r,
        )
        self.docker_errors = Counter(
            "parallax_docker_errors_total", "Failed Docker Engine API calls by error code.", ["code"], registry=r
        )
        self.gc_removed = Counter(
            "parallax_gc_removed_total", "Objects removed by garbage collection, by kind.", ["kind"], registry=r
        )
        self.docker_events = Counter(
            "parallax_docker_events_total", "Docker events received, by object type.", ["type"], registry=r
        )
        self.cache_objects = Gauge(
            "parallax_runtime_cache_objects",
            "Instances (containers) in the runtime's watch-fed cache.",
            registry=r,
        )
        self.egress_denied = Counter(
            "parallax_egress_denied_total",
            "Connections the egress gateway refused, by reason (not-allowed, host-local, unknown-source).",
            ["reason"],
            registry=r,
        )
        self.cache_relists = Counter(
            "parallax_runtime_cache_relists_total",
            "Full lists of the runtime's instances into the cache, by reason (stream-open, periodic, unsynced).",
            ["reason"],
            registry=r,
        )
        self.node_no_new_privileges = Gauge(
            "parallax_swarm_node_no_new_privileges",
            "Swarm only: 1 when the node's daemon gives task processes no-new-privileges (daemon.json), 0 when "
            "it does not (its agents can gain privileges through setuid programs); absent until seen.",
            ["node"],
            registry=r,
        )
        self.event_lag = Histogram(
            "parallax_docker_event_lag_seconds",
            "Time from Docker emitting an event to the controller receiving it.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        build = Gauge(
            "parallax_build_info", "Build information; the value is always 1.", ["version", "python"], registry=r
        )
        build.labels(_version(), platform.python_version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self._reconcile_time = self.reconcile_time.labels(CONTROLLER_NAME)
        self._active = self.active_workers.labels(CONTROLLER_NAME)
        self._errors = self.reconcile_errors.labels(CONTROLLER_NAME)
        self._results = {result: self.reconcile_total.labels(CONTROLLER_NAME, result) for result in RECONCILE_RESULTS}
        self._depth = self.depth.labels(CONTROLLER_NAME, CONTROLLER_NAME)
        self._adds = self.adds.labels(CONTROLLER_NAME, CONTROLLER_NAME)
        self._queue_duration = self.queue_duration.labels(CONTROLLER_NAME, CONTROLLER_NAME)
        self._work_duration = self.work_duration.labels(CONTROLLER_NAME, CONTROLLER_NAME)
        self.max_concurrent.labels(CONTROLLER_NAME).set(settings.workers)
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)
        for kind in GC_KINDS:
            self.gc_removed.labels(kind)
        for type_ in EVENT_TYPES:
            self.docker_events.labels(type_)
        for code in (*RESOLUTION, "UNEXPECTED"):
            self.docker_errors.labels(code)
        self.reconcile_errors.labels(CONTROLLER_NAME)

        self._docker_timers: dict[str, Histogram] = {}
        self.tracker = AgentTracker(on_restart=self._restarted, on_started=self.start_seconds.observe)
        self.queue: WatchedQueue | None = None
        self.docker_up: Callable[[], bool] = lambda: False
        self.usage: UsageSource | None = None
        self.leadership: LeaderState | None = None
        """Who leads (``controller.store.lease.Leadership``), for the leader_election_* series."""
        self._tasks: list[asyncio.Task[None]] = []
        r.register(_ScrapeTimeCollector(self))

    def watch(self, queue: WatchedQueue, docker_up: Callable[[], bool]) -> None:
        """Connect the scrape-time series to the controller's queue and Docker health."""
        self.queue = queue
        self.docker_up = docker_up

    async def start(self, store: Store, usage: UsageSource | None = None) -> None:
        """Follow the store (subscribed before this returns); per-agent series come from ``usage``.

        ``usage`` is the stats sampler that already runs in the background for the live-stats API, so
        Docker is asked once per container and interval, and a scrape only reads its latest samples.
        """
        self.usage = usage
        changes = store.subscribe()
        self._tasks.append(asyncio.create_task(self._follow_store(store, changes), name="metrics-store"))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks.clear()

    async def _follow_store(self, store: Store, changes: Subscription[Change]) -> None:
        try:
            await self._list_store(store, self.tracker.seed)
            while True:
                try:
                    change = await changes.get()
                except CutOff as exc:  # changes were missed: subscribe again, then list again
                    log.warning("metrics: the store's changes came faster than they were counted (%s); re-listing", exc)
                    store.unsubscribe(changes)
                    changes = store.subscribe()
                    await self._list_store(store, self.tracker.resync)
                    continue
                self.tracker.apply(change, time.time())
        finally:
            store.unsubscribe(changes)

    @staticmethod
    async def _list_store(store: Store, use: Callable[[Iterable[Agent], float], None]) -> None:
        while True:
            try:
                use(await store.list(), time.time())
                return
            except StoreError as exc:
                log.warning("metrics: cannot list the store yet: %s", exc)
                await asyncio.sleep(1.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # QueueObserver
    def on_add(self, key: str) -> None:
        self._adds.inc()
        self._depth.inc()

    def on_get(self, key: str, waited_seconds: float) -> None:
        self._depth.dec()
        self._queue_duration.observe(waited_seconds)

    def on_done(self, key: str, worked_seconds: float) -> None:
        self._work_duration.observe(worked_seconds)

    # DockerObserver
    def on_docker_call(self, operation: str, seconds: float, error_code: str | None) -> None:
        timer = self._docker_timers.get(operation)
        if timer is None:
            timer = self._docker_timers[operation] = self.docker_seconds.labels(operation)
        timer.observe(seconds)
        if error_code is not None:
            self.docker_errors.labels(error_code).inc()

    def on_docker_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("Type") or "other")
        self.docker_events.labels(kind if kind in EVENT_TYPES else "other").inc()
        emitted = event.get("timeNano")
        if isinstance(emitted, int):
            self.event_lag.observe(max(0.0, time.time() - emitted / 1e9))

    def on_cache_size(self, containers: int) -> None:
        self.cache_objects.set(containers)

    def on_relist(self, reason: str) -> None:
        self.cache_relists.labels(reason).inc()

    def on_node_no_new_privileges(self, node: str, enforced: bool) -> None:
        self.node_no_new_privileges.labels(node).set(1 if enforced else 0)

    # the manager's workers
    @contextlib.contextmanager
    def reconciling(self) -> Iterator[Callable[[str], None]]:
        """Count one reconcile: active while inside; the block calls the yielded function with its result.

        A reconcile that never reports a result (its worker was cancelled) is not counted.
        """
        outcome: list[str] = []
        self._active.inc()
        started = time.perf_counter()
        try:
            yield outcome.append
        finally:
            self._active.dec()
            if outcome:
                self._reconcile_time.observe(time.perf_counter() - started)
                self._results[outcome[-1]].inc()
                if outcome[-1] == "error":
                    self._errors.inc()

    def egress_denial(self, reason: str) -> None:
        self.egress_denied.labels(reason).inc()

    def gc(self, kind: str, count: int = 1) -> None:
        self.gc_removed.labels(kind).inc(count)

    def _restarted(self, reason: str, count: int) -> None:
        self.restarts.labels(reason).inc(count)


def _version() -> str:
    """The installed package's version, else the source tree's pyproject.toml (the image runs the tree)."""
    try:
        return metadata.version("parallax-docker-runtime")
    except metadata.PackageNotFoundError:
        pass
    try:
        with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
