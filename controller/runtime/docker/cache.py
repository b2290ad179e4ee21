"""Observed containers from one list and the event stream: client-go's shared informer and lister, for
this controller's containers on one Docker Engine.

Why: Docker answers a label-filtered container list by scanning every container, so asking it for one
agent's containers at each reconcile made a resync of N agents cost N scans of N containers. Here one
list (``relist``) learns every container of this controller instance; Docker's events then mark the
containers they concern as changed (no call on the event path); a reconcile reads its agent's
containers from the cache and inspects only those marked changed since they were last inspected. A
periodic resync with nothing changed makes no Docker call at all.

The rules that keep it honest:
- It is trusted only while the runtime's event stream is open (``synced``): the runtime relists when the
  stream opens (asking Docker to replay events since just before the list), marks the cache unsynced when
  the stream ends, and relists every ``PARALLAX_RELIST_SECONDS`` as a safety net. Unsynced, a read falls
  back to asking Docker for that agent's containers, as before the cache.
- The controller's own writes are reflected before the next decision: a removal drops the container, any
  other write marks it changed, a creation adds it, so the next read inspects it afresh.
- Inspections of one container are serialised and versioned: an event arriving while an inspection is in
  flight keeps the container marked changed, so an older answer never hides a newer change.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from controller.runtime.interface import Instance


@dataclass(frozen=True)
class Listed:
    """A container as one list call shows it: enough to know whose it is, not its state."""

    id: str
    agent: str


class ContainerCache:
    def __init__(
        self,
        inspect: Callable[[str], Awaitable[Instance | None]],
        on_size: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._inspect = inspect
        self._on_size = on_size
        self._known: dict[str, Instance | None] = {}
        """Every container of this instance, by id: its last inspection (None: not inspected yet)."""
        self._agent_of: dict[str, str] = {}
        self._by_agent: dict[str, set[str]] = {}
        self._changed: dict[str, int] = {}
        """Containers to inspect before their next read, with the version of their latest change."""
        self._versions = itertools.count(1)
        self._locks: dict[str, asyncio.Lock] = {}
        self.synced = False
        self.listed_at = float("-inf")
        """``time.monotonic()`` of the last relist."""

    def __len__(self) -> int:
        return len(self._agent_of)

    # -- what the list, the events and the controller's writes tell it -----------------------------

    def replace(self, listed: Iterable[Listed], *, missed_events: bool = True) -> set[str]:
        """A relist: exactly these containers exist. After a gap in the events (``missed_events``) every
        one is to be inspected before it is read; otherwise (the periodic safety net, with the stream
        open throughout) only new ones are, and ``unverified`` names the rest for ``verify``. The names
        of their agents."""
        listed = list(listed)
        present = {item.id for item in listed}
        for gone in [cid for cid in self._agent_of if cid not in present]:
            self.forget(gone)
        for item in listed:
            if missed_events or item.id not in self._agent_of:
                self.changed(item.id, item.agent)
        self.synced = True
        self.listed_at = time.monotonic()
        self._on_size(len(self))
        return {item.agent for item in listed}

    def changed(self, container_id: str, agent: str | None = None) -> None:
        """The container (new or known) changed: inspect it before its next read. ``agent`` is needed
        for a container not known yet (an event's labels, a creation)."""
        if container_id not in self._agent_of:
            if not agent:
                return
            self._agent_of[container_id] = agent
            self._by_agent.setdefault(agent, set()).add(container_id)
            self._known[container_id] = None
            self._on_size(len(self))
        self._changed[container_id] = next(self._versions)

    def changed_on_network(self, network: str) -> None:
        """Every container last seen on ``network`` changed (the network was removed)."""
        for container_id, instance in self._known.items():
            if instance is not None and network in instance.networks:
                self._changed[container_id] = next(self._versions)

    def forget(self, container_id: str) -> None:
        """The container is gone (destroyed, removed by us, or inspected as absent)."""
        agent = self._agent_of.pop(container_id, None)
        if agent is None:
            return
        ids = self._by_agent.get(agent)
        if ids is not None:
            ids.discard(container_id)
            if not ids:
                del self._by_agent[agent]
        self._known.pop(container_id, None)
        self._changed.pop(container_id, None)
        self._locks.pop(container_id, None)
        self._on_size(len(self))

    def unsynced(self) -> None:
        self.synced = False

    # -- reads -------------------------------------------------------------------------------------

    def agents(self) -> set[str]:
        return set(self._by_agent)

    def agent_of(self, container_id: str) -> str | None:
        return self._agent_of.get(container_id)

    async def instances(self, agent: str) -> list[Instance]:
        """The agent's containers as they are now: the changed ones are inspected first."""
        for container_id in list(self._by_agent.get(agent, ())):
            if container_id in self._changed:
                await self._refresh(container_id)
        found = (self._known.get(cid) for cid in self._by_agent.get(agent, ()))
        return [instance for instance in found if instance is not None]

    def unverified(self) -> list[str]:
        """Containers inspected before and not marked since: what a periodic relist checks in the
        background (``verify``)."""
        return [cid for cid, instance in self._known.items() if instance is not None and cid not in self._changed]

    async def verify(self, container_id: str) -> bool:
        """Inspect a container the cache believes it knows; if Docker says otherwise (an event that never
        came), mark it changed so its next read takes the new answer. Whether it differed."""
        known = self._known.get(container_id)
        if known is None or container_id in self._changed:
            return False
        instance = await self._inspect(container_id)
        if self._known.get(container_id) is not known or container_id in self._changed:
            return False  # changed meanwhile: the event's own inspection will tell
        if instance != known:
            self._changed[container_id] = next(self._versions)
            return True
        return False

    async def fresh(self, container_id: str) -> Instance | None:
        """One container inspected now (whether marked changed or not), the cache updated with it."""
        if container_id in self._agent_of:
            self._changed[container_id] = next(self._versions)
            await self._refresh(container_id)
            return self._known.get(container_id)
        instance = await self._inspect(container_id)
        if instance is not None and instance.agent and container_id not in self._agent_of:
            # Adopted with this answer (no second inspection); had an event filed it meanwhile, it
            # stays marked and its next read inspects it.
            self.changed(container_id, instance.agent)
            self._known[container_id] = instance
            del self._changed[container_id]
        return instance

    async def _refresh(self, container_id: str) -> None:
        lock = self._locks.setdefault(container_id, asyncio.Lock())
        async with lock:
            version = self._changed.get(container_id)
            if version is None:
                return  # inspected meanwhile by whoever held the lock
            instance = await self._inspect(container_id)
            if container_id not in self._agent_of:
                return  # forgotten while the inspection ran: it stays forgotten
            if instance is None:
                self.forget(container_id)
                return
            self._known[container_id] = instance
            if self._changed.get(container_id) == version:
                del self._changed[container_id]
