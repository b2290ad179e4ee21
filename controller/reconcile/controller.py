"""The controller: wires the sources of work (store changes, the runtime's changes, a periodic resync,
start-up) to the work queue, and the queue to ``workers`` that call ``reconcile``. Also runs network
garbage collection. It sees the store and runtime interfaces only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from controller.config import Settings
from controller.egress.policy import egress_network
from controller.model.errors import IMAGE_NOT_FOUND, SOCKET_ERROR, AgentError
from controller.model.secret import references
from controller.observe.logging_setup import reconcile_scope
from controller.observe.metrics import Metrics, reconcile_result
from controller.reconcile.reconciler import Reconciler
from controller.reconcile.workqueue import ItemExponentialFailureRateLimiter, RateLimitingQueue, ShutDown
from controller.runtime.interface import Runtime, RuntimeChange
from controller.store.interface import CutOff, Store, StoreError
from controller.store.lease import NotLeader
from controller.tasks import cancel_all

log = logging.getLogger("parallax.controller")

EVENT_RECONNECT_MAX = 10.0


class Controller:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: Runtime,
        metrics: Metrics | None = None,
        fence: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.metrics = metrics if metrics is not None else Metrics(settings)
        self.fence = fence
        """``NotLeader`` unless this controller leads (``controller.store.lease``): before runtime writes."""
        self._new_queue()
        self.reconciler = Reconciler(store, runtime, settings, on_collected=self.metrics.gc, fence=fence)
        self.docker_up = False
        self.docker_error: str | None = "not connected yet"
        self._tasks: list[asyncio.Task[None]] = []

    def _new_queue(self) -> None:
        self.queue = RateLimitingQueue(
            ItemExponentialFailureRateLimiter(base_delay=0.05, max_delay=60.0), observer=self.metrics
        )
        self.metrics.watch(self.queue, lambda: self.docker_up)

    async def start(self) -> None:
        """Start the loops; again after ``stop`` too (a controller that leads again gets a fresh queue)."""
        if self.queue.is_shutting_down():
            self._new_queue()
        for i in range(self.settings.workers):
            self._spawn(self._worker(i), f"worker-{i}")
        self._spawn(self._watch_store(), "watch-store")
        self._spawn(self._watch_secrets(), "watch-secrets")
        self._spawn(self._watch_runtime(), "watch-runtime")
        self._spawn(self._resync_loop(), "resync")
        await self.enqueue_all()

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        self.queue.shut_down()
        await cancel_all(self._tasks)
        self._tasks.clear()

    @property
    def alive(self) -> bool:
        """All loops still running (a crashed loop makes the controller not ready)."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def enqueue_all(self, *, now: bool = False) -> None:
        """The start-up and resync trigger: every record, and every instance that claims to be ours.
        ``now``: as news (``add_now``, ending any backoff), for when store changes may have been missed."""
        names: set[str] = set()
        try:
            names.update(agent.name for agent in await self.store.list())
        except StoreError as exc:
            log.warning("resync: cannot list the store: %s", exc)
        try:
            names.update(await self.runtime.agents_with_instances())
            self._docker_ok()
        except AgentError as exc:
            self._docker_failed(exc)
        for name in sorted(names):
            if now:
                self.queue.add_now(name)
            else:
                self.queue.add(name)

    def _docker_ok(self) -> None:
        if not self.docker_up:
            log.info("Docker daemon reachable")
        self.docker_up, self.docker_error = True, None

    def _docker_failed(self, exc: AgentError) -> None:
        if exc.code == SOCKET_ERROR:
            if self.docker_up:
                log.warning("Docker daemon unreachable: %s", exc.message)
            self.docker_up, self.docker_error = False, exc.message

    async def _worker(self, number: int) -> None:
        while True:
            try:
                name = await self.queue.get()
            except ShutDown:
                return
            with self.metrics.reconciling() as report, reconcile_scope(name):
                try:
                    result = await self.reconciler.reconcile(name)
                except NotLeader as exc:  # deposed: the election stops these loops now
                    report("error")
                    log.warning("reconcile %s stopped: %s", name, exc)
                    return
                except AgentError:
                    # Not a verdict on the daemon: one agent's call may time out while others work.
                    # The event watcher's ping decides whether Docker is up.
                    report("error")
                    self.queue.add_rate_limited(name)
                except StoreError as exc:
                    report("error")
                    log.warning("reconcile %s: store error: %s", name, exc)
                    self.queue.add_rate_limited(name)
                except Exception:
                    report("error")
                    log.exception("reconcile %s failed unexpectedly", name)
                    self.queue.add_rate_limited(name)
                else:
                    report(reconcile_result(result.requeue_after))
                    self.queue.forget(name)
                    if result.requeue_after is not None:
                        self.queue.add_after(name, result.requeue_after)
                finally:
                    self.queue.done(name)

    async def _watch_store(self) -> None:
        changes = self.store.subscribe()
        try:
            while True:
                try:
                    change = await changes.get()
                except CutOff as exc:
                    # Fell too far behind: changes were lost, so any record may hold a new desired state.
                    # Subscribe again first (nothing after the re-list is missed), then requeue them all.
                    log.warning("store changes came faster than they were queued (%s); requeueing every agent", exc)
                    self.store.unsubscribe(changes)
                    changes = self.store.subscribe()
                    await self.enqueue_all(now=True)
                    continue
                if change.spec_changed:  # a new desired state: act on it now, whatever the backoff
                    self.queue.add_now(change.agent.name)
        finally:
            self.store.unsubscribe(changes)

    async def _watch_secrets(self) -> None:
        """A Secret whose data changed (or that went) requeues the agents that reference it: their config
        hash moves with the value, so they are rolled, or they get ``SecretMissing``."""
        changes = self.store.subscribe_secrets()
        try:
            while True:
                try:
                    name = await changes.get()
                except CutOff:
                    self.store.unsubscribe_secrets(changes)
                    changes = self.store.subscribe_secrets()
                    await self.enqueue_all(now=True)
                    continue
                for agent in await self.store.list():
                    if references(agent, name):
                        self.queue.add_now(agent.name)
        finally:
            self.store.unsubscribe_secrets(changes)

    async def _watch_runtime(self) -> None:
        """The runtime's stream of changes, reconnected and followed by a full re-list whenever it breaks."""
        delay = 0.5
        while True:
            try:
                await self.runtime.ping()
                self._docker_ok()
                relist = asyncio.create_task(self.enqueue_all())  # changes were missed while it was down
                async for change in self.runtime.changes():
                    delay = 0.5
                    await self._on_change(change)
                await relist
                log.info("runtime change stream ended; reconnecting")
            except AgentError as exc:
                self._docker_failed(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("runtime change stream failed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, EVENT_RECONNECT_MAX)

    async def _on_change(self, change: RuntimeChange) -> None:
        """Requeue the agents whose outcome the change may alter, and only those."""
        if change.kind in ("instance", "network-detached") and change.agent:
            self.queue.add(change.agent)  # a runtime that knows whose instance was detached says so
        elif change.kind in ("network-detached", "network-removed"):
            # A detach concerns one instance (a failed start detaches its own, for one): only its agent.
            # A removed network concerns every agent on it.
            with contextlib.suppress(StoreError):
                for agent in await self.store.list():
                    if change.network in (agent.spec.network, egress_network(agent.spec.network)) and (
                        change.kind == "network-removed" or agent.status.get("containerId") == change.instance_id
                    ):
                        self.queue.add(agent.name)
        elif change.kind == "image-added":
            with contextlib.suppress(StoreError):
                for agent in await self.store.list():
                    if (agent.status.get("error") or {}).get("code") == IMAGE_NOT_FOUND:
                        self.queue.add_now(agent.name)  # the image it was missing may be here now

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            await self.enqueue_all()
            try:
                await self.collect_networks()
            except (AgentError, StoreError) as exc:
                log.warning("network garbage collection skipped: %s", exc)

    async def _wanted_networks(self) -> set[str]:
        agents = await self.store.list()
        wanted = {agent.spec.network for agent in agents}
        wanted |= {self.runtime.render(agent).network_of(agent) for agent in agents}  # egress twins
        # the default network and its egress twin are never collected (agents come and go on them all the time)
        return wanted | {self.settings.network, egress_network(self.settings.network)}

    async def collect_networks(self) -> list[str]:
        """Remove networks we created that no agent asks for and no container uses. The store is read
        again after a network is found unused, just before it is removed: an agent stored meanwhile is
        seen then, or its container (created before it starts) was seen on the network."""
        wanted = await self._wanted_networks()
        removed = []
        for network in await self.runtime.managed_networks():
            if network.name in wanted or await self.runtime.network_in_use(network.id):
                continue
            if network.name in await self._wanted_networks():
                continue
            self.fence()
            await self.runtime.remove_network(network.id)
            log.info("removed unused network %s", network.name)
            removed.append(network.name)
            self.metrics.gc("network")
        return removed
