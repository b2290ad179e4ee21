"""A resumable watch over Agent changes and controller events, like the Kubernetes watch cache.

Every store write has a store-wide resourceVersion. The hub keeps the most recent writes in a ring, so
a client that reconnects with the last version it saw gets exactly what it missed; a version older than
the ring is "expired", and the client must re-list (Kubernetes answers 410 Gone).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.store import AgentEvent, Change, Store
from controller.tasks import cancel_all

RING_CAPACITY = 4096


@dataclass(frozen=True)
class WatchItem:
    resource_version: int
    type: str  # ADDED | MODIFIED | DELETED | EVENT
    name: str
    labels: Mapping[str, str]
    object: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "resourceVersion": str(self.resource_version), "object": self.object}


class Expired(Exception):
    """The requested resourceVersion is older than what the hub still holds."""


Filter = Callable[[WatchItem], bool]


class Listener:
    def __init__(self, hub: WatchHub, accept: Filter) -> None:
        self.hub = hub
        self.accept = accept
        self.queue: asyncio.Queue[WatchItem | None] = asyncio.Queue()

    def offer(self, item: WatchItem) -> None:
        if self.accept(item):
            self.queue.put_nowait(item)

    async def next(self) -> WatchItem | None:
        """The next item; None when the hub is shutting down."""
        return await self.queue.get()

    def close(self) -> None:
        self.hub._listeners.discard(self)


def item_for_change(change: Change) -> WatchItem:
    agent = change.agent
    return WatchItem(
        agent.metadata.resource_version, change.type, agent.name, agent.metadata.labels, agent.to_manifest()
    )


def item_for_event(event: AgentEvent) -> WatchItem:
    return WatchItem(event.resource_version, "EVENT", event.agent, event.labels, event.to_dict())


class WatchHub:
    def __init__(self, store: Store, capacity: int = RING_CAPACITY) -> None:
        self.store = store
        self._ring: deque[WatchItem] = deque(maxlen=capacity)
        self._listeners: set[Listener] = set()
        self._floor = 0
        self.last_rv = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._published = asyncio.Event()

    async def start(self) -> None:
        feed = self.store.subscribe_feed()  # changes and events in one queue: in resourceVersion order
        self._floor = self.last_rv = await self.store.current_rv()
        self._tasks = [asyncio.create_task(self._pump(feed))]

    def end_listeners(self) -> None:
        """End every open watch (at shutdown, so the server need not wait for streams to time out)."""
        for listener in list(self._listeners):
            listener.queue.put_nowait(None)

    async def stop(self) -> None:
        self.end_listeners()
        await cancel_all(self._tasks)

    async def _pump(self, feed: asyncio.Queue[Change | AgentEvent]) -> None:
        while True:
            entry = await feed.get()
            self.publish(item_for_event(entry) if isinstance(entry, AgentEvent) else item_for_change(entry))

    def publish(self, item: WatchItem) -> None:
        if len(self._ring) == self._ring.maxlen:
            self._floor = self._ring[0].resource_version
        self._ring.append(item)
        self.last_rv = max(self.last_rv, item.resource_version)
        for listener in list(self._listeners):
            listener.offer(item)
        published, self._published = self._published, asyncio.Event()
        published.set()

    async def caught_up(self, rv: int, timeout: float) -> bool:
        """Whether the hub has published everything up to ``rv``, waiting at most ``timeout`` seconds
        (a commit reaches the hub a moment after the store answered it)."""
        try:
            async with asyncio.timeout(timeout):
                while self.last_rv < rv:
                    await self._published.wait()
        except TimeoutError:
            return False
        return True

    def listen(self, since: int | None, accept: Filter) -> Listener:
        """A listener that first receives everything after ``since`` (if given), then live items."""
        if since is not None and since < self._floor:
            raise Expired(f"resourceVersion {since} is too old (oldest available {self._floor}); re-list")
        listener = Listener(self, accept)
        if since is not None:
            for item in sorted((i for i in self._ring if i.resource_version > since), key=lambda i: i.resource_version):
                listener.offer(item)
        self._listeners.add(listener)
        return listener
