"""The store contract's rules, for every store: what a write does to a record, and when it is refused.

A store (``SqliteStore``, a PostgreSQL store later) keeps records and commits writes; what a write
means is decided here, by pure functions from a view of the records and a request to the record to
write (a ``Staged``) or an error. A store calls them at the point where nothing else can write between
the check and the write: ``SqliteStore`` synchronously on the event loop, over its committed records
plus the writes queued for its next group commit; a database store inside its transaction, over the
rows it locked. The rules:

- ``resourceVersion`` is one store-wide counter, like etcd's revision: every write that changes
  something takes the next one; a write that changes nothing takes none and answers the record as it is.
- ``generation`` moves only when the spec changes (not for labels, annotations, status or deletion).
- Compare-and-set (``expected_rv``): a write made from a version that is no longer the latest is a
  ``Conflict``, except that a client holding the committed version is not stale when only the
  controller's status writes are queued on top of it (a client can only have read committed versions,
  and status is not what it decided on). See ``check_rv``.
- Names own container names: ``parallax-agent-<name>`` is unique, so ``agent-7`` and ``7`` collide
  (``AlreadyExists`` naming the container).
- Deleting marks the record (``deletionTimestamp``, phase ``Terminating``); the controller purges it
  once its container is gone. A record being deleted cannot be replaced.
- ``Store.update(name, build)`` builds on the latest version, queued writes included.
- ``Store.write_all``: each write is checked as if those before it were made, all or nothing; a write
  with ``planned_from`` is a ``Conflict`` when the record's desired state (``desired``) changed since.

The types every store shares are here too: the errors, ``Change``, ``AgentEvent``, ``Write``, and the
bounded ``Subscription`` a subscriber reads changes from.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from controller.model.agent import Agent, container_name
from controller.model.secret import Secret
from controller.model.timestamps import now_iso, parse_time

T = TypeVar("T")


class StoreError(Exception):
    """Base of the store's errors; the API maps each to an HTTP status."""

    index: int | None = None
    """For ``Store.write_all``: the position of the write that was refused."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The store cannot be read or written (disk full, file unwritable, locked by another controller)."""


ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class Change:
    type: ChangeType
    agent: Agent
    spec_changed: bool
    """False for status-only writes (the reconciler's own); True for anything that changes desired state."""


@dataclass(frozen=True)
class AgentEvent:
    """A controller event about one agent (client-go's Event: repeated ones are counted, not repeated)."""

    agent: str
    uid: str
    type: str  # Normal | Warning
    reason: str
    message: str
    count: int
    first_timestamp: str
    last_timestamp: str
    resource_version: int
    labels: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": "parallax.ai/v1",
            "kind": "Event",
            "involvedObject": {"kind": "Agent", "name": self.agent, "uid": self.uid},
            "type": self.type,
            "reason": self.reason,
            "message": self.message,
            "count": self.count,
            "firstTimestamp": self.first_timestamp,
            "lastTimestamp": self.last_timestamp,
            "metadata": {"resourceVersion": str(self.resource_version)},
        }


EVENTS_PER_AGENT = 50
"""An agent keeps its newest this many events."""
EVENT_TTL_SECONDS = 3600
"""Events older than this (by their last occurrence) are gone."""
EVENT_AGGREGATE_SECONDS = 600
"""The same event (agent, uid, type, reason, message) again within this long counts up the earlier one."""


@dataclass(frozen=True)
class Write:
    """One write of ``Store.write_all``: create or replace ``agent``, or mark agent ``name`` deleted."""

    op: Literal["create", "replace", "delete"]
    name: str
    agent: Agent | None = None
    planned_from: Agent | None = None
    """The record this write was decided from: if its desired state (spec, labels, annotations, deletion)
    changed since, the write is a conflict. The controller's status writes do not count."""


# -- subscriptions -------------------------------------------------------------------------------

DEFAULT_SUBSCRIBER_BUFFER = 4096
"""Changes a subscriber may fall behind before it is cut off (``PARALLAX_WATCH_BUFFER``)."""


class CutOff(Exception):
    """The subscriber fell more than its buffer behind: the changes since are lost to it. It must
    re-list (and subscribe again first, so that nothing after the re-list is missed)."""


class Subscription(Generic[T]):
    """A subscriber's queue, bounded: one that falls more than ``buffer`` items behind is cut off.

    The store ``offer``s items; the subscriber ``get``s them. Once cut off, the items still queued are
    dropped (their memory freed at once), ``offer`` refuses everything and ``get`` raises ``CutOff``: a
    subscriber that cannot keep up costs at most ``buffer`` items, and never silently loses some.
    """

    def __init__(self, buffer: int = DEFAULT_SUBSCRIBER_BUFFER) -> None:
        if buffer < 1:
            raise ValueError("a subscription needs a buffer of at least 1")
        self.buffer = buffer
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._cut: str | None = None

    @property
    def cut_off(self) -> str | None:
        """Why the subscriber was cut off; None while it is not."""
        return self._cut

    def offer(self, item: T) -> bool:
        """Queue ``item``; False when the subscriber is cut off (now, because its buffer is full, or before)."""
        if self._cut is not None:
            return False
        if len(self._items) >= self.buffer:
            self.cut(f"fell more than {self.buffer} changes behind")
            return False
        self._items.append(item)
        self._ready.set()
        return True

    def cut(self, reason: str, *, keep_queued: bool = False) -> None:
        """Cut the subscriber off: drop what is queued (unless ``keep_queued``: then ``get`` answers it
        first) and make ``get`` raise ``CutOff(reason)``."""
        if self._cut is None:
            self._cut = reason
        if not keep_queued:
            self._items.clear()
        self._ready.set()

    async def get(self) -> T:
        """The next item, waiting for one; ``CutOff`` once cut off."""
        while not self._items:
            if self._cut is not None:
                raise CutOff(self._cut)
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> T:
        if self._items:
            return self._items.popleft()
        if self._cut is not None:
            raise CutOff(self._cut)
        raise asyncio.QueueEmpty

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items


def announce(subscribers: set[Subscription[T]], item: T, log: logging.Logger) -> list[Subscription[T]]:
    """Offer ``item`` to every subscriber; one that is cut off (too far behind) is dropped from the set,
    logged and returned, and nobody else waits for it."""
    dropped = [queue for queue in subscribers if not queue.offer(item)]
    for queue in dropped:
        subscribers.discard(queue)
        log.warning("a store subscriber %s and was cut off; it must re-list", queue.cut_off)
    return dropped


class ChangeSubscribers:
    """The subscribers of record changes: of every record, or of one record's name (a ``?wait=true``
    request waits for one agent). A change is offered to the first kind and to those of its own name only,
    so a thousand requests waiting for a thousand agents cost one offer per change, not a thousand."""

    def __init__(self, buffer: int, log: logging.Logger) -> None:
        self.buffer = buffer
        self._log = log
        self._every: set[Subscription[Change]] = set()
        self._named: dict[str, set[Subscription[Change]]] = {}
        self._name_of: dict[Subscription[Change], str] = {}

    def subscribe(self, name: str | None = None) -> Subscription[Change]:
        queue: Subscription[Change] = Subscription(self.buffer)
        if name is None:
            self._every.add(queue)
        else:
            self._named.setdefault(name, set()).add(queue)
            self._name_of[queue] = name
        return queue

    def unsubscribe(self, queue: Subscription[Change]) -> None:
        self._every.discard(queue)
        name = self._name_of.pop(queue, None)
        queues = self._named.get(name) if name is not None else None
        if name is not None and queues is not None:
            queues.discard(queue)
            if not queues:
                del self._named[name]

    def announce(self, change: Change) -> None:
        """Offer ``change`` to the subscribers of every record and to those of its name (``announce``)."""
        announce(self._every, change, self._log)
        named = self._named.get(change.agent.name)
        if named is not None:
            for queue in announce(named, change, self._log):
                self.unsubscribe(queue)

    def cut_all(self, reason: str) -> None:
        for queue in [*self._every, *(q for queues in self._named.values() for q in queues)]:
            queue.cut(reason)
        self._every.clear()
        self._named.clear()
        self._name_of.clear()


# -- the write rules -----------------------------------------------------------------------------


class View(Protocol):
    """The records as a write must see them. A store that reads rows from a database loads the records
    (and the container-name owners) a request names before staging it."""

    def latest(self, name: str) -> Agent | None:
        """The record with every write accepted so far (queued ones included); None: no such record."""
        ...

    def committed(self, name: str) -> Agent | None:
        """The record as a client can have read it: the last committed version."""
        ...

    def owner(self, container: str) -> str | None:
        """The agent whose container name ``container`` is (committed or accepted), if any."""
        ...


@dataclass(frozen=True)
class Staged:
    """A checked write: the record to answer with, and the change to commit (None: nothing to write).

    A store commits ``change`` (``ADDED`` claims the agent's container name, ``DELETED`` frees it) and
    announces it once durable; ``change.agent.metadata.resource_version`` is the version it takes."""

    name: str
    answer: Agent
    change: Change | None

    @property
    def rv(self) -> int | None:
        """The resourceVersion this write takes; None when it writes nothing."""
        return None if self.change is None else self.change.agent.metadata.resource_version


def desired(agent: Agent | None) -> tuple[Any, ...] | None:
    """What a user decided about an agent (everything but its status and resourceVersion)."""
    if agent is None:
        return None
    meta = agent.metadata
    return (meta.uid, meta.generation, meta.labels, meta.annotations, meta.deletion_timestamp, agent.spec)


def check_rv(current: Agent, expected_rv: str | None, committed: Agent | None = None) -> None:
    """Compare-and-set against ``current`` (the record including queued writes). A client can only have
    read ``committed``: if it holds that version and only the controller's status is queued on top of it,
    nothing it decided on has changed, so it is not stale."""
    if expected_rv is None or str(current.metadata.resource_version) == str(expected_rv):
        return
    if (
        committed is not None
        and str(committed.metadata.resource_version) == str(expected_rv)
        and desired(committed) == desired(current)
    ):
        return
    raise Conflict(
        f"agent {current.name!r} was modified: resourceVersion {expected_rv} is stale "
        f"(current {current.metadata.resource_version}); re-read it and try again"
    )


def stage_create(view: View, agent: Agent, rv: int) -> Staged:
    """A new record: a fresh uid, generation 1, resourceVersion ``rv``, status Pending."""
    if view.latest(agent.name) is not None:
        raise AlreadyExists(f"agent {agent.name!r} already exists")
    container = container_name(agent.name)
    owner = view.owner(container)
    if owner is not None and owner != agent.name:
        raise AlreadyExists(f"agent {owner!r} already uses container name {container!r}")
    new = agent.copy()
    new.metadata.uid = str(uuid.uuid4())
    new.metadata.generation = 1
    new.metadata.resource_version = rv
    new.metadata.creation_timestamp = now_iso()
    new.metadata.deletion_timestamp = None
    new.status = {"phase": "Pending", "observedGeneration": 0, "restartCount": 0}
    return Staged(new.name, new, Change("ADDED", new, True))


def stage_replace(view: View, agent: Agent, expected_rv: str | None, rv: int) -> Staged:
    """Replace spec, labels and annotations; generation moves only when the spec changes. Replacing with
    what is there writes nothing."""
    current = view.latest(agent.name)
    if current is None:
        raise NotFound(f"agent {agent.name!r} not found")
    check_rv(current, expected_rv, view.committed(current.name))
    if current.metadata.deletion_timestamp is not None:
        raise Conflict(f"agent {agent.name!r} is being deleted")
    spec_changed = current.spec != agent.spec
    if (
        not spec_changed
        and current.metadata.labels == agent.metadata.labels
        and current.metadata.annotations == agent.metadata.annotations
    ):
        return Staged(current.name, current, None)
    new = current.copy()
    new.spec = agent.spec
    new.metadata.labels = dict(agent.metadata.labels)
    new.metadata.annotations = dict(agent.metadata.annotations)
    if spec_changed:
        new.metadata.generation += 1
    new.metadata.resource_version = rv
    return Staged(new.name, new, Change("MODIFIED", new, True))


def stage_update(view: View, name: str, build: Callable[[Agent], Agent], expected_rv: str | None, rv: int) -> Staged:
    """Replace agent ``name`` with ``build(latest)`` (a copy of the latest version, queued writes
    included). ``build`` may raise (an invalid result): the error is the caller's, nothing is staged."""
    current = view.latest(name)
    if current is None:
        raise NotFound(f"agent {name!r} not found")
    check_rv(current, expected_rv, view.committed(name))
    return stage_replace(view, build(current.copy()), expected_rv, rv)


def stage_delete(view: View, name: str, expected_rv: str | None, rv: int) -> Staged:
    """Mark the record deleted (``deletionTimestamp``, phase Terminating); marking it again writes nothing."""
    current = view.latest(name)
    if current is None:
        raise NotFound(f"agent {name!r} not found")
    check_rv(current, expected_rv, view.committed(current.name))
    if current.metadata.deletion_timestamp is not None:
        return Staged(name, current, None)
    new = current.copy()
    new.metadata.deletion_timestamp = now_iso()
    new.metadata.resource_version = rv
    new.status["phase"] = "Terminating"
    return Staged(name, new, Change("MODIFIED", new, True))


ACTIVITY = "lastActivityTime"


def _activity(status: dict[str, Any]) -> Any:
    raw = status.get(ACTIVITY)
    try:
        return parse_time(str(raw)) if raw else None
    except ValueError:
        return None


def later_activity(stored: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """``incoming`` with the later ``status.lastActivityTime`` of the two: it never moves back, so a
    status write built from an older read does not undo an activity the API noted since."""
    kept, new = _activity(stored), _activity(incoming)
    if kept is None or (new is not None and new >= kept):
        return incoming
    return {**incoming, ACTIVITY: stored[ACTIVITY]}


def stage_activity(view: View, name: str, at: str, rv: int) -> Staged | None:
    """``status.lastActivityTime = at`` on the latest record (unless it holds a later one), as a status
    write: no new generation, announced with ``spec_changed=False``. None when there is no record."""
    current = view.latest(name)
    if current is None:
        return None
    status = later_activity(current.status, {**current.status, ACTIVITY: at})
    if current.status == status:
        return Staged(name, current, None)
    new = current.copy()
    new.status = copy.deepcopy(status)
    new.metadata.resource_version = rv
    return Staged(name, new, Change("MODIFIED", new, False))


def stage_status(view: View, name: str, uid: str, status: dict[str, Any], rv: int) -> Staged | None:
    """The controller's status write; None when the record is gone or is another incarnation (``uid``).
    The same status again writes nothing. The stored ``lastActivityTime`` is kept when it is later."""
    current = view.latest(name)
    if current is None or current.metadata.uid != uid:
        return None
    status = later_activity(current.status, status)
    if current.status == status:
        return Staged(name, current, None)
    new = current.copy()
    new.status = copy.deepcopy(status)
    new.metadata.resource_version = rv
    return Staged(name, new, Change("MODIFIED", new, False))


def stage_purge(view: View, name: str, uid: str, rv: int) -> Staged | None:
    """Remove the record (the controller's, once its container is gone); None when it is gone or is
    another incarnation. The ``DELETED`` change carries the record as it was, at version ``rv``."""
    current = view.latest(name)
    if current is None or current.metadata.uid != uid:
        return None
    gone = current.copy()
    gone.metadata.resource_version = rv
    return Staged(name, gone, Change("DELETED", gone, True))


class _Overlay:
    """``view`` with the writes staged so far by one ``stage_all`` made."""

    def __init__(self, base: View) -> None:
        self.base = base
        self.records: dict[str, Agent] = {}
        self.owners: dict[str, str] = {}

    def latest(self, name: str) -> Agent | None:
        return self.records[name] if name in self.records else self.base.latest(name)

    def committed(self, name: str) -> Agent | None:
        return self.base.committed(name)

    def owner(self, container: str) -> str | None:
        return self.owners[container] if container in self.owners else self.base.owner(container)

    def add(self, staged: Staged) -> None:
        self.records[staged.name] = staged.answer
        if staged.change is not None and staged.change.type == "ADDED":
            self.owners[container_name(staged.name)] = staged.name


def stage_all(view: View, writes: Sequence[Write], first_rv: int) -> list[Staged]:
    """``Store.write_all``'s checks: each write as if those before it were made, the ones that write
    taking ``first_rv``, ``first_rv + 1``... in order. The first refusal is raised, its ``index`` the
    position of the refused write; then none of them may be written. A write without the agent its
    ``op`` needs is a ``ValueError``."""
    overlay = _Overlay(view)
    staged: list[Staged] = []
    rv = first_rv
    try:
        for write in writes:
            if write.planned_from is not None and desired(overlay.latest(write.name)) != desired(write.planned_from):
                raise Conflict(f"agent {write.name!r} was changed after it was read; read it again")
            if write.op == "delete":
                item = stage_delete(overlay, write.name, None, rv)
            elif write.agent is None:
                raise ValueError(f"a {write.op} needs the agent")
            elif write.op == "create":
                item = stage_create(overlay, write.agent, rv)
            else:
                item = stage_replace(overlay, write.agent, None, rv)
            overlay.add(item)
            staged.append(item)
            if item.change is not None:
                rv += 1
    except StoreError as exc:
        exc.index = len(staged)  # the writes before it were staged
        raise
    return staged


def stage_secret(current: Secret | None, given: Secret, *, create: bool) -> Secret:
    """The Secret a write of ``given`` makes (``create``: a new one, else a replacement of ``current``):
    a new one gets a uid and version 1; a replacement moves the version only when the data changes, each
    key's only when its value does. ``AlreadyExists`` / ``NotFound``."""
    if create and current is not None:
        raise AlreadyExists(f"secret {given.name!r} already exists")
    if not create and current is None:
        raise NotFound(f"secret {given.name!r} not found")
    if current is None:
        return Secret(
            given.name,
            dict(given.data),
            dict(given.labels),
            uid=str(uuid.uuid4()),
            version=1,
            key_versions=dict.fromkeys(given.data, 1),
            creation_timestamp=now_iso(),
        )
    return current.next_version(given.data, given.labels)
