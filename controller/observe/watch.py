"""A resumable watch over Agent changes and controller events, like the Kubernetes watch cache.

Every store write has a store-wide resourceVersion. The hub keeps the most recent writes in a ring, so
a client that reconnects with the last version it saw gets exactly what it missed; a version older than
the ring is "expired", and the client must re-list (Kubernetes answers 410 Gone).

A watcher that falls more than ``buffer`` items behind (a client too slow to read what it is sent) is
cut off the same way: its next item is ``Expired``, and only what is queued for it, at most ``buffer``
items, is ever held for it. The hub itself reads the store's feed; if it ever falls that far behind
the store, every watcher is cut off and the hub's history starts again at the store's latest version.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.store.interface import DEFAULT_SUBSCRIBER_BUFFER, AgentEvent, Change, CutOff, Store, Subscription
from controller.tasks import cancel_all

log = logging.getLogger(__name__)

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
    """One watch: the items it accepts, queued until its stream sends them, at most ``hub.buffer`` more
    than its initial backlog; a listener that falls further behind is cut off (``next`` raises
    ``Expired``) and dropped by the hub."""

    def __init__(self, hub: WatchHub, accept: Filter, backlog: int = 0) -> None:
        self.hub = hub
        self.accept = accept
        self.queue: Subscription[WatchItem] = Subscription(hub.buffer + backlog)
        self._ended = False

    def offer(self, item: WatchItem) -> bool:
        """Queue ``item`` if the listener wants it; False when the listener is cut off."""
        if self.accept(item):
            return self.queue.offer(item)
        return self.queue.cut_off is None

    async def next(self) -> WatchItem | None:
        """The next item; None when the hub is shutting down; ``Expired`` when the listener was cut off."""
        try:
            return await self.queue.get()
        except CutOff as exc:
            if self._ended:
                return None
            raise Expired(f"this watch {exc}; re-list") from exc

    def end(self) -> None:
        """End the watch (the server is shutting down): ``next`` answers None."""
        self._ended = True
        self.queue.cut("ended", keep_queued=True)

    def cut(self, reason: str) -> None:
        self.queue.cut(reason)

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
    def __init__(self, store: Store, capacity: int = RING_CAPACITY, buffer: int = DEFAULT_SUBSCRIBER_BUFFER) -> None:
        self.store = store
        self.buffer = buffer
        """Items a watcher may fall behind before it is cut off (``PARALLAX_WATCH_BUFFER``)."""
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
            listener.end()

    async def stop(self) -> None:
        self.end_listeners()
        await cancel_all(self._tasks)

    async def _pump(self, feed: Subscription[Change | AgentEvent]) -> None:
        try:
            while True:
                try:
                    entry = await feed.get()
                except CutOff as exc:
                    feed = await self._restart(feed, str(exc))
                    continue
                self.publish(item_for_event(entry) if isinstance(entry, AgentEvent) else item_for_change(entry))
        finally:
            self.store.unsubscribe_feed(feed)

    async def _restart(self, feed: Subscription[Change | AgentEvent], why: str) -> Subscription[Change | AgentEvent]:
        """The hub fell too far behind the store and missed changes: subscribe again, forget the history
        (resuming from before now is no longer possible) and cut off every watcher, who must re-list."""
        log.warning("the watch hub %s the store and was cut off; every watcher must re-list", why)
        self.store.unsubscribe_feed(feed)
        feed = self.store.subscribe_feed()
        self._ring.clear()
        self._floor = self.last_rv = max(self.last_rv, await self.store.current_rv())
        for listener in list(self._listeners):
            listener.cut(f"missed changes (the server {why} the store)")
        self._listeners.clear()
        published, self._published = self._published, asyncio.Event()
        published.set()
        return feed

    def publish(self, item: WatchItem) -> None:
        if len(self._ring) == self._ring.maxlen:
            self._floor = self._ring[0].resource_version
        self._ring.append(item)
        self.last_rv = max(self.last_rv, item.resource_version)
        for listener in list(self._listeners):
            if not listener.offer(item):
                self._listeners.discard(listener)  # too slow: cut off, nothing more is kept for it
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
        backlog = []
        if since is not None:
            backlog = sorted((i for i in self._ring if i.resource_version > since), key=lambda i: i.resource_version)
        # What was missed is sent whatever its size (it is in the ring anyway); the bound is on what
        # comes on top of it.
        listener = Listener(self, accept, len(backlog))
        for item in backlog:
            listener.offer(item)
        self._listeners.add(listener)
        return listener
