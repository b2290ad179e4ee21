"""The store interface: the ``Store`` Protocol every store implements, and the contract's types and errors
(defined with the write rules in ``controller.store.rules``). Everything above the stores imports from here,
never from a store's implementation; ``tests/contract/test_store_contract.py`` is the contract as tests."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from controller.model.agent import Agent
from controller.model.secret import Secret
from controller.store.rules import (
    DEFAULT_SUBSCRIBER_BUFFER,
    EVENT_AGGREGATE_SECONDS,
    EVENT_TTL_SECONDS,
    EVENTS_PER_AGENT,
    AgentEvent,
    AlreadyExists,
    Change,
    ChangeType,
    Conflict,
    CutOff,
    NotFound,
    StoreError,
    StoreUnavailable,
    Subscription,
    Write,
)

__all__ = [
    "DEFAULT_SUBSCRIBER_BUFFER",
    "EVENTS_PER_AGENT",
    "EVENT_AGGREGATE_SECONDS",
    "EVENT_TTL_SECONDS",
    "AgentEvent",
    "AlreadyExists",
    "Change",
    "ChangeType",
    "Conflict",
    "CutOff",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "Write",
]


class Store(Protocol):
    """The desired-state store: what the API, the controller and the watch hub may rely on, whatever
    keeps the records (SQLite now, PostgreSQL later). ``tests/contract/test_store_contract.py`` is this
    contract as tests: a store is one that passes it unchanged.

    - Records are Agents keyed by name. What a write does and when it is refused are the rules of
      ``controller.store.rules``, which every store calls (resourceVersion, generation, compare-and-set,
      container-name ownership, deletion marks).
    - Writes take effect in the order they are called, each seeing every write called before it
      (including ones not committed yet): the call orders them, not its completion.
    - A write is answered only once it is durable; a write that is refused changes nothing. The errors
      are ``NotFound``, ``AlreadyExists``, ``Conflict`` (stale ``expected_rv``, a record being deleted,
      a ``planned_from`` that is out of date) and ``StoreUnavailable`` (cannot read or write: then the
      write is not made, and neither is any write accepted after it in the same failed commit).
    - Every committed change is announced, after it is durable and in resourceVersion order, to every
      subscriber of ``subscribe`` and ``subscribe_feed`` that subscribed before it was committed.
      Subscriptions are bounded (``buffer`` when the store was opened): a subscriber that falls more
      than that behind is cut off and gets ``CutOff`` (then re-lists), while the store and the other
      subscribers go on.
    """

    async def open(self) -> None:
        """Connect, check and load; ``StoreUnavailable`` (naming the cause) when the store cannot be used,
        e.g. another controller owns it."""
        ...

    async def close(self) -> None:
        """Finish (answer) every write already accepted, then release the store."""
        ...

    async def ping(self) -> None:
        """``StoreUnavailable`` unless the store can be read, and written again if the last write failed
        (``/readyz``)."""
        ...

    async def get(self, name: str) -> Agent:
        """The committed record, a private copy the caller may change; ``NotFound``."""
        ...

    async def list(self) -> list[Agent]:
        """Every committed record, ordered by name. Shared objects: callers must not change them."""
        ...

    async def create(self, agent: Agent) -> Agent:
        """A new record (``store_rules.stage_create``): fresh uid, generation 1, status Pending, announced
        ``ADDED``. ``AlreadyExists`` when the name, or its container name, is taken (also by a write not
        committed yet)."""
        ...

    async def replace(self, agent: Agent, *, expected_rv: str | None = None) -> Agent:
        """Replace spec, labels and annotations (``store_rules.stage_replace``); generation moves only
        with the spec; nothing to change writes (and announces) nothing. ``NotFound``; ``Conflict`` when
        ``expected_rv`` is stale (``store_rules.check_rv``) or the record is being deleted."""
        ...

    async def update(self, name: str, build: Callable[[Agent], Agent], *, expected_rv: str | None = None) -> Agent:
        """Replace agent ``name`` with ``build(latest)``, where ``latest`` is a copy of the record with
        every write called before this one: reading it, building and accepting the write are one step,
        so no write made meanwhile is lost (a merge patch applies to the latest version, a redacted
        secret keeps the latest value). ``build`` may raise (an invalid result): that error is raised and
        nothing is written. Errors as ``replace``."""
        ...

    async def mark_deleted(self, name: str, *, expected_rv: str | None = None) -> Agent:
        """Mark the record deleted (``deletionTimestamp``, phase Terminating, announced ``MODIFIED``); the
        controller purges it once its container is gone. Marking it again writes nothing. ``NotFound``,
        ``Conflict`` on a stale ``expected_rv``."""
        ...

    async def write_all(self, writes: Sequence[Write]) -> builtins.list[Agent]:
        """All or nothing, in one commit (``store_rules.stage_all``): each write is checked as if those
        before it were made, and they take consecutive resourceVersions. If one is refused, its error is
        raised with ``index`` its position, and none is written or announced. The answers are in the
        order of ``writes``."""
        ...

    async def update_status(self, name: str, uid: str, status: dict[str, Any]) -> Agent | None:
        """The controller's status write (announced with ``spec_changed=False``); never a conflict. None
        when the record is gone or is another incarnation (``uid``); the same status writes nothing."""
        ...

    async def record_activity(self, name: str, at: str) -> Agent | None:
        """``status.lastActivityTime = at`` on the latest record, unless it holds a later time (a status
        write: no new generation, announced with ``spec_changed=False``); a later ``update_status`` that
        carries an older time keeps this one. None when there is no record."""
        ...

    async def purge(self, name: str, uid: str) -> bool:
        """Remove the record of incarnation ``uid`` (announced ``DELETED``, with a new resourceVersion)
        and free its container name; False when there is no such record."""
        ...

    async def current_rv(self) -> int:
        """The last committed resourceVersion: every change with a version up to it is committed, and
        every change committed after a ``subscribe``/``subscribe_feed`` that preceded this call has a
        higher one (so subscribe first, then read this, then list: nothing is missed)."""
        ...

    def subscribe(self, name: str | None = None) -> Subscription[Change]:
        """Record changes from now on, in resourceVersion order, each once durable (the controller's
        trigger, ``?wait=true``, metrics); with ``name``, the changes of that record only. Bounded:
        ``CutOff`` once the subscriber falls too far behind."""
        ...

    def unsubscribe(self, queue: Subscription[Change]) -> None:
        """Stop announcing to ``queue`` (unknown or cut-off queues are fine)."""
        ...

    def subscribe_feed(self) -> Subscription[Change | AgentEvent]:
        """Record changes and events together, in resourceVersion order (what the watch hub serves).
        Bounded like ``subscribe``."""
        ...

    def unsubscribe_feed(self, queue: Subscription[Change | AgentEvent]) -> None:
        """Stop announcing to ``queue`` (unknown or cut-off queues are fine)."""
        ...

    async def record_event(self, agent: Agent, type_: str, reason: str, message: str) -> AgentEvent:
        """Record an event about ``agent`` with the next resourceVersion, announced on the feed once
        durable. The same event (agent, uid, type, reason, message) within ``EVENT_AGGREGATE_SECONDS``
        counts up the earlier one instead (its ``count``, ``lastTimestamp`` and version move); an agent
        keeps its newest ``EVENTS_PER_AGENT`` events, none older than ``EVENT_TTL_SECONDS``."""
        ...

    async def list_events(self, name: str, uid: str | None = None) -> builtins.list[AgentEvent]:
        """The agent's events, oldest (by resourceVersion) first; only incarnation ``uid``'s when given."""
        ...

    # Secrets: named data, kept sealed (``controller.store.cipher``), never part of an Agent record.

    async def list_secrets(self) -> builtins.list[Secret]:
        """Every Secret (private copies, values in plain text), ordered by name."""
        ...

    async def get_secret(self, name: str) -> Secret:
        """``NotFound``."""
        ...

    async def put_secret(self, secret: Secret, *, create: bool) -> Secret:
        """Create (``create``: ``AlreadyExists`` if taken) or replace (``NotFound`` if missing) a Secret's
        data and labels (``store_rules.stage_secret``: version 1, then moving only with the data), answered
        once durable. A change of data is announced to ``subscribe_secrets`` (on every controller)."""
        ...

    async def delete_secret(self, name: str) -> None:
        """Remove a Secret, announced; ``NotFound``."""
        ...

    def subscribe_secrets(self) -> Subscription[str]:
        """The names of Secrets whose data changed or that were deleted, from now on (the controller
        requeues the agents that reference them). Bounded like ``subscribe``."""
        ...

    def unsubscribe_secrets(self, queue: Subscription[str]) -> None: ...
