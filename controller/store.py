"""Desired-state store: Agent records with generation, resourceVersion and compare-and-set writes.

``Store`` is the interface the API and the reconciler use; ``SqliteStore`` is the embedded default
(WAL journal, one file, no setup). Every write bumps one store-wide resourceVersion counter, like
etcd's revision, so a change feed can be resumed from a version later on.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiosqlite

from controller.model import Agent, SpecDefaults, container_name, now_iso

# aiosqlite logs every statement with its parameters at DEBUG, and those hold env values (secrets).
logging.getLogger("aiosqlite").setLevel(logging.INFO)


class StoreError(Exception):
    """Base of the store's errors; the API maps each to an HTTP status."""


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
EVENT_TTL_SECONDS = 3600
EVENT_AGGREGATE_SECONDS = 600


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def get(self, name: str) -> Agent: ...
    async def list(self) -> list[Agent]: ...
    async def create(self, agent: Agent) -> Agent: ...
    async def replace(self, agent: Agent, *, expected_rv: str | None = None) -> Agent: ...
    async def mark_deleted(self, name: str, *, expected_rv: str | None = None) -> Agent: ...
    async def update_status(self, name: str, uid: str, status: dict[str, Any]) -> Agent | None: ...
    async def purge(self, name: str, uid: str) -> bool: ...
    def subscribe(self) -> asyncio.Queue[Change]: ...
    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None: ...
    async def current_rv(self) -> int: ...
    async def record_event(self, agent: Agent, type_: str, reason: str, message: str) -> AgentEvent: ...
    async def list_events(self, name: str, uid: str | None = None) -> builtins.list[AgentEvent]: ...
    def subscribe_events(self) -> asyncio.Queue[AgentEvent]: ...
    def unsubscribe_events(self, queue: asyncio.Queue[AgentEvent]) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    container_name TEXT NOT NULL UNIQUE,
    manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (key, value) VALUES ('resourceVersion', 0);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    uid TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_ts TEXT NOT NULL,
    last_ts TEXT NOT NULL,
    last_epoch REAL NOT NULL,
    rv INTEGER NOT NULL,
    labels TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_agent ON events (agent, rv);
"""


class SqliteStore:
    def __init__(self, path: str, defaults: SpecDefaults) -> None:
        self.path = path
        self._defaults = defaults
        self._db: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None
        self._write_lock = asyncio.Lock()
        self._subscribers: set[asyncio.Queue[Change]] = set()
        self._event_subscribers: set[asyncio.Queue[AgentEvent]] = set()
        self.write_error: str | None = None
        self._cache: dict[str, Agent] = {}

    async def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreUnavailable(f"store {self.path} is in use by another controller") from exc
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(_SCHEMA)
        await self._load_cache()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("store is not open")
        return self._db

    async def ping(self) -> None:
        """Readable, and writable again if the last write failed (disk full, file unwritable)."""
        try:
            await self.db.execute("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unreadable: {exc}") from exc
        if self.write_error is not None:
            async with self._transaction() as db:
                await db.execute("INSERT OR REPLACE INTO counters (key, value) VALUES ('probe', 0)")

    def _load(self, manifest: str) -> Agent:
        return Agent.from_manifest(json.loads(manifest), self._defaults)

    async def get(self, name: str) -> Agent:
        """A private copy of the record (callers may change it)."""
        agent = self._cache.get(name)
        if agent is None:
            raise NotFound(f"agent {name!r} not found")
        return agent.copy()

    async def list(self) -> list[Agent]:
        """Every record, by name. Shared read-only objects: the API's hot path, so no copies are made."""
        return [self._cache[name] for name in sorted(self._cache)]

    async def _load_cache(self) -> None:
        """Reads are served from memory: one controller owns the store (the lock), so it sees every write."""
        async with self.db.execute("SELECT manifest FROM agents") as cur:
            rows = await cur.fetchall()
        self._cache = {agent.name: agent for agent in (self._load(row[0]) for row in rows)}

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            db = self.db
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self.write_error = f"store unwritable: {exc}"
                raise StoreUnavailable(self.write_error) from exc
            try:
                yield db
                await db.execute("COMMIT")
                self.write_error = None
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    self.write_error = f"store unwritable: {exc}"
                    raise StoreUnavailable(self.write_error) from exc
                raise

    async def _next_rv(self, db: aiosqlite.Connection) -> int:
        await db.execute("UPDATE counters SET value = value + 1 WHERE key = 'resourceVersion'")
        async with db.execute("SELECT value FROM counters WHERE key = 'resourceVersion'") as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def _read(self, db: aiosqlite.Connection, name: str) -> Agent | None:
        async with db.execute("SELECT manifest FROM agents WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return None if row is None else self._load(row[0])

    async def _write(self, db: aiosqlite.Connection, agent: Agent) -> None:
        manifest = json.dumps(agent.to_manifest(redact=False), sort_keys=True)
        await db.execute(
            "INSERT INTO agents (name, uid, container_name, manifest) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET uid = excluded.uid, manifest = excluded.manifest",
            (agent.name, agent.metadata.uid, container_name(agent.name), manifest),
        )

    async def create(self, agent: Agent) -> Agent:
        async with self._transaction() as db:
            if await self._read(db, agent.name) is not None:
                raise AlreadyExists(f"agent {agent.name!r} already exists")
            async with db.execute(
                "SELECT name FROM agents WHERE container_name = ?", (container_name(agent.name),)
            ) as cur:
                clash = await cur.fetchone()
            if clash is not None:
                raise AlreadyExists(f"agent {clash[0]!r} already uses container name {container_name(agent.name)!r}")
            new = agent.copy()
            new.metadata.uid = str(uuid.uuid4())
            new.metadata.generation = 1
            new.metadata.resource_version = await self._next_rv(db)
            new.metadata.creation_timestamp = now_iso()
            new.metadata.deletion_timestamp = None
            new.status = {"phase": "Pending", "observedGeneration": 0, "restartCount": 0}
            await self._write(db, new)
        self._notify(Change("ADDED", new, True))
        return new

    async def replace(self, agent: Agent, *, expected_rv: str | None = None) -> Agent:
        """Replace spec, labels and annotations; generation moves only when the spec changes."""
        async with self._transaction() as db:
            current = await self._read(db, agent.name)
            if current is None:
                raise NotFound(f"agent {agent.name!r} not found")
            _check_rv(current, expected_rv)
            if current.metadata.deletion_timestamp is not None:
                raise Conflict(f"agent {agent.name!r} is being deleted")
            spec_changed = current.spec != agent.spec
            if (
                not spec_changed
                and current.metadata.labels == agent.metadata.labels
                and current.metadata.annotations == agent.metadata.annotations
            ):
                return current
            new = current.copy()
            new.spec = agent.spec
            new.metadata.labels = dict(agent.metadata.labels)
            new.metadata.annotations = dict(agent.metadata.annotations)
            if spec_changed:
                new.metadata.generation += 1
            new.metadata.resource_version = await self._next_rv(db)
            await self._write(db, new)
        self._notify(Change("MODIFIED", new, True))
        return new

    async def mark_deleted(self, name: str, *, expected_rv: str | None = None) -> Agent:
        async with self._transaction() as db:
            current = await self._read(db, name)
            if current is None:
                raise NotFound(f"agent {name!r} not found")
            _check_rv(current, expected_rv)
            if current.metadata.deletion_timestamp is not None:
                return current
            new = current.copy()
            new.metadata.deletion_timestamp = now_iso()
            new.metadata.resource_version = await self._next_rv(db)
            new.status["phase"] = "Terminating"
            await self._write(db, new)
        self._notify(Change("MODIFIED", new, True))
        return new

    async def update_status(self, name: str, uid: str, status: dict[str, Any]) -> Agent | None:
        """Write status (the controller's only write); None when the record is gone or was replaced."""
        cached = self._cache.get(name)
        if cached is not None and cached.metadata.uid == uid and cached.status == status:
            return cached.copy()  # unchanged: no transaction, no fsync
        async with self._transaction() as db:
            current = await self._read(db, name)
            if current is None or current.metadata.uid != uid:
                return None
            if current.status == status:
                return current
            new = current.copy()
            new.status = dict(status)
            new.metadata.resource_version = await self._next_rv(db)
            await self._write(db, new)
        self._notify(Change("MODIFIED", new, False))
        return new

    async def purge(self, name: str, uid: str) -> bool:
        async with self._transaction() as db:
            current = await self._read(db, name)
            if current is None or current.metadata.uid != uid:
                return False
            rv = await self._next_rv(db)
            await db.execute("DELETE FROM agents WHERE name = ?", (name,))
        gone = current.copy()
        gone.metadata.resource_version = rv
        self._notify(Change("DELETED", gone, True))
        return True

    async def current_rv(self) -> int:
        try:
            async with self.db.execute("SELECT value FROM counters WHERE key = 'resourceVersion'") as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unreadable: {exc}") from exc
        return int(row[0]) if row else 0

    async def record_event(self, agent: Agent, type_: str, reason: str, message: str) -> AgentEvent:
        """Record an event; the same event again within 10 minutes bumps its count instead."""
        now, stamp = time.time(), now_iso()
        labels = json.dumps(agent.metadata.labels, sort_keys=True)
        async with self._transaction() as db:
            rv = await self._next_rv(db)
            async with db.execute(
                "SELECT id, count, first_ts FROM events WHERE agent = ? AND uid = ? AND type = ? AND reason = ? "
                "AND message = ? AND last_epoch >= ? ORDER BY id DESC LIMIT 1",
                (agent.name, agent.metadata.uid, type_, reason, message, now - EVENT_AGGREGATE_SECONDS),
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                count, first = int(row[1]) + 1, str(row[2])
                await db.execute(
                    "UPDATE events SET count = ?, last_ts = ?, last_epoch = ?, rv = ?, labels = ? WHERE id = ?",
                    (count, stamp, now, rv, labels, row[0]),
                )
            else:
                count, first = 1, stamp
                await db.execute(
                    "INSERT INTO events (agent, uid, type, reason, message, count, first_ts, last_ts, last_epoch, rv,"
                    " labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (agent.name, agent.metadata.uid, type_, reason, message, count, first, stamp, now, rv, labels),
                )
                await db.execute(
                    "DELETE FROM events WHERE agent = ? AND id NOT IN "
                    "(SELECT id FROM events WHERE agent = ? ORDER BY rv DESC LIMIT ?)",
                    (agent.name, agent.name, EVENTS_PER_AGENT),
                )
                await db.execute("DELETE FROM events WHERE last_epoch < ?", (now - EVENT_TTL_SECONDS,))
        event = AgentEvent(
            agent.name, agent.metadata.uid, type_, reason, message, count, first, stamp, rv, dict(agent.metadata.labels)
        )
        for queue in self._event_subscribers:
            queue.put_nowait(event)
        return event

    async def list_events(self, name: str, uid: str | None = None) -> builtins.list[AgentEvent]:
        """Events of an agent, oldest first; only those of one incarnation when ``uid`` is given."""
        query = (
            "SELECT agent, uid, type, reason, message, count, first_ts, last_ts, rv, labels FROM events WHERE agent = ?"
        )
        args: tuple[Any, ...] = (name,)
        if uid is not None:
            query += " AND uid = ?"
            args += (uid,)
        query += " AND last_epoch >= ? ORDER BY rv"
        args += (time.time() - EVENT_TTL_SECONDS,)
        try:
            async with self.db.execute(query, args) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unreadable: {exc}") from exc
        return [
            AgentEvent(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], int(r[8]), json.loads(r[9])) for r in rows
        ]

    def subscribe_events(self) -> asyncio.Queue[AgentEvent]:
        queue: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self._event_subscribers.add(queue)
        return queue

    def unsubscribe_events(self, queue: asyncio.Queue[AgentEvent]) -> None:
        self._event_subscribers.discard(queue)

    def subscribe(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        self._subscribers.discard(queue)

    def _notify(self, change: Change) -> None:
        if change.type == "DELETED":
            self._cache.pop(change.agent.name, None)
        else:
            self._cache[change.agent.name] = change.agent.copy()
        for queue in self._subscribers:
            queue.put_nowait(change)


def _check_rv(current: Agent, expected_rv: str | None) -> None:
    if expected_rv is not None and str(current.metadata.resource_version) != str(expected_rv):
        raise Conflict(
            f"agent {current.name!r} was modified: resourceVersion {expected_rv} is stale "
            f"(current {current.metadata.resource_version}); re-read it and try again"
        )
