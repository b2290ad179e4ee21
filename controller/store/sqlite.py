"""Desired-state store: Agent records with generation, resourceVersion and compare-and-set writes.

``Store`` is the contract the API, the controller and the watch hub use (``tests/contract/`` checks
it); ``SqliteStore`` is the embedded default (WAL journal, one file, no setup). What a write does is
decided by ``controller.store.rules``, which every store calls; ``controller.store.url.open_store``
picks the store ``PARALLAX_STORE`` names. Every write bumps one store-wide resourceVersion counter,
like etcd's revision, so a change feed can be resumed from a version later on.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from controller.model.agent import Agent, SpecDefaults, container_name
from controller.model.secret import Secret
from controller.model.timestamps import now_iso
from controller.store import rules
from controller.store.cipher import CipherError, SecretCipher
from controller.store.rules import (
    DEFAULT_SUBSCRIBER_BUFFER,
    EVENT_AGGREGATE_SECONDS,
    EVENT_TTL_SECONDS,
    EVENTS_PER_AGENT,
    AgentEvent,
    Change,
    ChangeSubscribers,
    NotFound,
    Staged,
    StoreUnavailable,
    Subscription,
    Write,
    announce,
)
from controller.store.sealed import open_manifest, open_secret, seal_manifest, seal_secret
from controller.store.secret_reads import SecretReads

log = logging.getLogger("parallax.store")
T = TypeVar("T")


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
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
"""


@dataclass
class _Write:
    """One row change waiting for the next group commit; ``run`` executes it on the store's thread."""

    run: Callable[[sqlite3.Connection], Any]
    rv: int
    """The resourceVersion this write takes (0: none); the queue is in resourceVersion order."""
    future: asyncio.Future[Any]
    after: Callable[[Any], Any]
    """Called on the event loop once the batch is durable, with what ``run`` returned; its result is the
    caller's answer (and it is where the cache is updated and watchers are told, in commit order)."""
    group: int = 0
    """Writes of one ``write_all`` share a group (non-zero), and a batch never splits a group."""


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _constant(value: T, _: Any) -> T:
    return value


_STORE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")
KEY_FILE = "secret.key"
"""The default key file (``PARALLAX_SECRET_KEY_FILE``), beside the store."""


def default_key_file(store_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(store_path)), KEY_FILE)


def _private_directory(directory: str, name: str) -> None:
    """Make or check the store's directory: the store holds every agent's secrets and its contents start
    containers, so nobody else may read its files or put files of their own in their place.

    A missing directory is created 0700. An existing one of ours that holds nothing but this store's
    files (and the default ``volumes/``) is the store's own and is tightened to 0700. Any other directory
    is shared (a home directory, ``/tmp``): its mode is not ours to change, so it is used only when no one
    else can write to it, and the store's own files in it are made 0600.
    """
    try:
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)  # makedirs' mode passes through the umask
        return
    except FileExistsError:
        pass
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise StoreUnavailable(f"store directory {directory} is not a directory")
    mode, uid = stat.S_IMODE(info.st_mode), os.geteuid()
    own = {name + suffix for suffix in _STORE_FILE_SUFFIXES} | {"volumes", KEY_FILE}
    if info.st_uid == uid and set(os.listdir(directory)) <= own:
        if mode & 0o077:
            os.chmod(directory, 0o700)
    elif info.st_uid not in (uid, 0):
        raise StoreUnavailable(
            f"store directory {directory} belongs to uid {info.st_uid}, not to this user (uid {uid}), "
            "who could replace the store's files; set PARALLAX_STORE to a path in a directory of your own"
        )
    elif mode & 0o022:
        who = "anyone" if mode & 0o002 else "its group"
        raise StoreUnavailable(
            f"store directory {directory} (mode {mode:04o}) is writable by {who}, who could replace the "
            f"store's files; set PARALLAX_STORE to a path in a directory of its own, e.g. "
            f"{os.path.join(directory, 'parallax', name)} (created 0700)"
        )
    for suffix in _STORE_FILE_SUFFIXES:
        path = os.path.join(directory, name + suffix)
        with contextlib.suppress(FileNotFoundError):
            file = os.stat(path)
            if file.st_uid == uid and stat.S_IMODE(file.st_mode) & 0o077:
                os.chmod(path, 0o600)


class SqliteStore(SecretReads):
    """SQLite in WAL mode, written by group commit.

    One controller owns the store (a lock file makes sure), so the committed records live in memory
    and reads never touch the disk. A write is checked against the committed records plus those
    still waiting to be committed, is given its resourceVersion at once, and waits for the batch it
    joined: every write queued while the previous batch was being committed goes into the next one,
    a single transaction with one fsync. Callers are answered, the cache is updated and watchers are
    told only after that fsync, in resourceVersion order. If a batch fails (disk full), it and every
    write queued behind it are refused, so nothing decided on top of a lost write survives.
    """

    MAX_BATCH = 512

    def __init__(
        self,
        path: str,
        defaults: SpecDefaults,
        *,
        buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
        cipher: SecretCipher | None = None,
    ) -> None:
        self.path = path
        self._cipher = cipher
        """Seals secret material before it reaches the file; None: the key file beside the store."""
        self._secrets: dict[str, Secret] = {}  # committed
        self._secrets_pending: dict[str, tuple[int, Secret | None]] = {}
        self._secret_subscribers: set[Subscription[str]] = set()
        self._defaults = defaults
        self._buffer = buffer
        self._conn: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._subscribers = ChangeSubscribers(self._buffer, log)
        self._feed_subscribers: set[Subscription[Change | AgentEvent]] = set()
        self.write_error: str | None = None
        self._cache: dict[str, Agent] = {}  # committed records
        self._pending: dict[str, tuple[int, Agent | None]] = {}  # name -> (write seq, record or None if purged)
        self._owners: dict[str, str] = {}  # container name -> agent name, committed plus pending
        self._committed_rv = 0
        self._assigned_rv = 0
        self._seq = 0
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._latest = _MemoryView(self)
        self.batches = 0
        """Group commits so far (transactions, so fsyncs); the benchmarks print writes per batch."""

    async def open(self) -> None:
        _private_directory(os.path.dirname(os.path.abspath(self.path)), os.path.basename(self.path))
        self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreUnavailable(f"store {self.path} is in use by another controller") from exc
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        if self._cipher is None:
            try:
                self._cipher = SecretCipher.load(default_key_file(self.path))
            except CipherError as exc:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise StoreUnavailable(str(exc)) from exc
        cipher = self._cipher
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="parallax-store")

        def connect() -> tuple[list[Agent], list[Secret], int]:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA secure_delete=ON")  # what a write replaces is zeroed, not left in free pages
            conn.executescript(_SCHEMA)
            self._conn = conn
            agents, secrets = _reseal(conn, cipher, self._defaults)
            row = conn.execute("SELECT value FROM counters WHERE key = 'resourceVersion'").fetchone()
            return agents, secrets, int(row[0]) if row else 0

        try:
            agents, secrets, rv = await self._run(connect)
        except CipherError as exc:
            raise StoreUnavailable(f"store {self.path}: {exc}") from exc
        self._secrets = {secret.name: secret for secret in secrets}
        self._cache = {agent.name: agent for agent in agents}
        self._owners = {container_name(name): name for name in self._cache}
        self._committed_rv = self._assigned_rv = rv

    async def close(self) -> None:
        await self._idle.wait()
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the store's one thread (sqlite3 blocks: never on the event loop)."""
        if self._thread is None:
            raise StoreUnavailable("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    @property
    def cipher(self) -> SecretCipher:
        if self._cipher is None:
            raise StoreUnavailable("store is not open")
        return self._cipher

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("store is not open")
        return self._conn

    async def _read_query(self, query: str, args: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        conn = self.conn
        try:
            return await self._run(lambda: conn.execute(query, args).fetchall())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store unreadable: {exc}") from exc

    async def ping(self) -> None:
        """Readable, and writable again if the last write failed (disk full, file unwritable)."""
        await self._read_query("SELECT 1")
        if self.write_error is not None:
            await self._submit(
                lambda conn: conn.execute("INSERT OR REPLACE INTO counters (key, value) VALUES ('probe', 0)"),
                lambda _: None,
            )

    async def get(self, name: str) -> Agent:
        """A private copy of the record (callers may change it)."""
        agent = self._cache.get(name)
        if agent is None:
            raise NotFound(f"agent {name!r} not found")
        return agent.copy()

    async def list(self) -> list[Agent]:
        """Every record, by name. Shared read-only objects: the API's hot path, so no copies are made."""
        return [self._cache[name] for name in sorted(self._cache)]

    # -- writing -----------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._assigned_rv += 1
        return self._assigned_rv

    def _enqueue(
        self, run: Callable[[sqlite3.Connection], Any], after: Callable[[Any], Any], rv: int = 0, group: int = 0
    ) -> Awaitable[Any]:
        """Queue a write for the next group commit; the returned awaitable is its answer once durable."""
        if self._conn is None:
            raise StoreUnavailable("store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(run, rv, future, after, group))
        if self._flusher is None:
            self._idle.clear()
            self._flusher = asyncio.create_task(self._flush(), name="store-group-commit")
        # The write is in a batch now: a caller that gives up does not take it back.
        return asyncio.shield(future)

    async def _submit(self, run: Callable[[sqlite3.Connection], Any], after: Callable[[Any], T], rv: int = 0) -> T:
        return cast(T, await self._enqueue(run, after, rv))

    def _put(self, staged: Staged, group: int = 0) -> Awaitable[Any]:
        """Queue writing (or, for a purge, deleting) a staged record; its change is announced once durable."""
        name, change = staged.name, staged.change
        assert change is not None
        # Staged against the records as they are now, with the next version: accept it before anything
        # else can stage, so the queue stays in resourceVersion order and names stay owned.
        assert change.agent.metadata.resource_version == self._assigned_rv + 1, "staged out of order"
        self._assigned_rv += 1
        if change.type == "ADDED":
            self._owners[container_name(name)] = name
        elif change.type == "DELETED":
            self._owners.pop(container_name(name), None)
        self._seq += 1
        seq = self._seq
        self._pending[name] = (seq, None if change.type == "DELETED" else change.agent)
        if change.type == "DELETED":

            def run(conn: sqlite3.Connection) -> Any:
                return conn.execute("DELETE FROM agents WHERE name = ?", (name,))

        else:
            agent = change.agent
            manifest = seal_manifest(agent, self.cipher)
            row = (name, agent.metadata.uid, container_name(name), manifest)

            def run(conn: sqlite3.Connection) -> Any:
                return conn.execute(
                    "INSERT INTO agents (name, uid, container_name, manifest) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET uid = excluded.uid, manifest = excluded.manifest",
                    row,
                )

        def after(_: Any) -> Agent:
            if self._pending.get(name, (None,))[0] == seq:
                del self._pending[name]
            self._notify(change)
            return change.agent.copy()

        return self._enqueue(run, after, change.agent.metadata.resource_version, group)

    async def _write_staged(self, staged: builtins.list[Staged]) -> builtins.list[Agent]:
        """Queue the staged writes together (so they share one commit) and answer once they are durable.
        A record that needs no write still waits for a queued write of it that its answer has seen."""
        answers: builtins.list[Any] = []  # an Agent, or an awaitable of one
        group = 0
        if len(staged) > 1:
            self._seq += 1
            group = self._seq
        for item in staged:
            answer = item.answer.copy()
            if item.change is not None:
                answers.append(self._put(item, group))
            elif item.name in self._pending:
                answers.append(self._enqueue(_nothing, functools.partial(_constant, answer), 0, group))
            else:
                answers.append(answer)  # nothing to wait for (the steady state's unchanged status)
        waits = [a for a in answers if not isinstance(a, Agent)]
        if not waits:
            return answers
        done = iter(await asyncio.gather(*waits))
        return [a if isinstance(a, Agent) else next(done) for a in answers]

    async def _flush(self) -> None:
        """The group-commit loop: one transaction for everything queued, until the queue is empty."""
        try:
            while self._queue:
                cut = min(self.MAX_BATCH, len(self._queue))
                while cut < len(self._queue) and self._queue[cut].group != 0:
                    if self._queue[cut].group != self._queue[cut - 1].group:
                        break
                    cut += 1  # the rest of a write_all goes into the same transaction
                batch, self._queue = self._queue[:cut], self._queue[cut:]
                rv = max([self._committed_rv, *(write.rv for write in batch)])
                try:
                    results = await self._run(functools.partial(self._commit, batch, rv))
                except sqlite3.Error as exc:
                    self._refuse(batch + self._queue, f"store unwritable: {exc}")
                    self._queue = []
                    continue
                except BaseException as exc:  # the thread is gone (closing): nobody may wait forever
                    self._refuse(batch + self._queue, f"store write failed: {exc!r}")
                    self._queue = []
                    raise
                self.batches += 1
                self.write_error = None
                self._committed_rv = max(self._committed_rv, rv)
                for write, result in zip(batch, results, strict=True):
                    answer = write.after(result)
                    if not write.future.done():
                        write.future.set_result(answer)
        finally:
            self._flusher = None
            self._idle.set()

    def _commit(self, batch: builtins.list[_Write], rv: int) -> builtins.list[Any]:
        """On the store's thread: the whole batch in one transaction, so one fsync."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [write.run(conn) for write in batch]
            conn.execute("UPDATE counters SET value = ? WHERE key = 'resourceVersion'", (rv,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return results

    def _refuse(self, writes: builtins.list[_Write], error: str) -> None:
        """A failed batch: refuse it and all queued behind it, and forget what they were going to change."""
        self.write_error = error
        log.warning("%s; %d queued writes refused", error, len(writes))
        self._pending.clear()
        self._secrets_pending.clear()
        self._owners = {container_name(name): name for name in self._cache}
        self._assigned_rv = self._committed_rv
        for write in writes:
            if not write.future.done():
                write.future.set_exception(StoreUnavailable(error))

    # Writing: the store_rules check a write against the records plus the writes queued for the next
    # commit, synchronously, and it is queued at once, so nothing can write between the check and it.

    async def create(self, agent: Agent) -> Agent:
        return (await self._write_staged([rules.stage_create(self._latest, agent, self._assigned_rv + 1)]))[0]

    async def replace(self, agent: Agent, *, expected_rv: str | None = None) -> Agent:
        """Replace spec, labels and annotations; generation moves only when the spec changes."""
        staged = rules.stage_replace(self._latest, agent, expected_rv, self._assigned_rv + 1)
        return (await self._write_staged([staged]))[0]

    async def update(self, name: str, build: Callable[[Agent], Agent], *, expected_rv: str | None = None) -> Agent:
        """Replace agent ``name`` with ``build(latest)``: ``latest`` is the record with every write queued
        so far, and reading it, building and queueing are one synchronous step. So a merge patch applies
        to the latest version and a redacted secret keeps the latest value: no acknowledged write made
        meanwhile is lost. ``build`` may raise (an invalid result): then nothing is written."""
        staged = rules.stage_update(self._latest, name, build, expected_rv, self._assigned_rv + 1)
        return (await self._write_staged([staged]))[0]

    async def mark_deleted(self, name: str, *, expected_rv: str | None = None) -> Agent:
        staged = rules.stage_delete(self._latest, name, expected_rv, self._assigned_rv + 1)
        return (await self._write_staged([staged]))[0]

    async def write_all(self, writes: Sequence[Write]) -> builtins.list[Agent]:
        """All or nothing, in one commit: each write is checked as if those before it were made, and if
        one is refused (its error is raised, naming the agent) none of them is written."""
        return await self._write_staged(rules.stage_all(self._latest, writes, self._assigned_rv + 1))

    async def update_status(self, name: str, uid: str, status: dict[str, Any]) -> Agent | None:
        """Write status (the controller's only write); None when the record is gone or was replaced."""
        staged = rules.stage_status(self._latest, name, uid, status, self._assigned_rv + 1)
        if staged is None:
            return None
        return (await self._write_staged([staged]))[0]  # unchanged: nothing to write, nothing announced

    async def record_activity(self, name: str, at: str) -> Agent | None:
        staged = rules.stage_activity(self._latest, name, at, self._assigned_rv + 1)
        if staged is None:
            return None
        return (await self._write_staged([staged]))[0]

    async def purge(self, name: str, uid: str) -> bool:
        staged = rules.stage_purge(self._latest, name, uid, self._assigned_rv + 1)
        if staged is None:
            return False
        await self._write_staged([staged])
        return True

    async def current_rv(self) -> int:
        """The last committed resourceVersion (every committed change has one at most this)."""
        return self._committed_rv

    async def record_event(self, agent: Agent, type_: str, reason: str, message: str) -> AgentEvent:
        """Record an event; the same event again within 10 minutes bumps its count instead."""
        now, stamp = time.time(), now_iso()
        labels = json.dumps(agent.metadata.labels, sort_keys=True)
        name, uid = agent.name, agent.metadata.uid
        rv = self._next_rv()

        def run(conn: sqlite3.Connection) -> tuple[int, str]:
            row = conn.execute(
                "SELECT id, count, first_ts FROM events WHERE agent = ? AND uid = ? AND type = ? AND reason = ? "
                "AND message = ? AND last_epoch >= ? ORDER BY id DESC LIMIT 1",
                (name, uid, type_, reason, message, now - EVENT_AGGREGATE_SECONDS),
            ).fetchone()
            if row is not None:
                count, first = int(row[1]) + 1, str(row[2])
                conn.execute(
                    "UPDATE events SET count = ?, last_ts = ?, last_epoch = ?, rv = ?, labels = ? WHERE id = ?",
                    (count, stamp, now, rv, labels, row[0]),
                )
                return count, first
            conn.execute(
                "INSERT INTO events (agent, uid, type, reason, message, count, first_ts, last_ts, last_epoch, rv,"
                " labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, uid, type_, reason, message, 1, stamp, stamp, now, rv, labels),
            )
            conn.execute(
                "DELETE FROM events WHERE agent = ? AND id NOT IN "
                "(SELECT id FROM events WHERE agent = ? ORDER BY rv DESC LIMIT ?)",
                (name, name, EVENTS_PER_AGENT),
            )
            conn.execute("DELETE FROM events WHERE last_epoch < ?", (now - EVENT_TTL_SECONDS,))
            return 1, stamp

        def after(result: tuple[int, str]) -> AgentEvent:
            count, first = result
            event = AgentEvent(name, uid, type_, reason, message, count, first, stamp, rv, json.loads(labels))
            announce(self._feed_subscribers, event, log)
            return event

        return await self._submit(run, after, rv)

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
        rows = await self._read_query(query, args)
        return [
            AgentEvent(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], int(r[8]), json.loads(r[9])) for r in rows
        ]

    # -- Secrets ---------------------------------------------------------------------------------------

    def _latest_secret(self, name: str) -> Secret | None:
        pending = self._secrets_pending.get(name)
        return pending[1] if pending is not None else self._secrets.get(name)

    async def put_secret(self, secret: Secret, *, create: bool) -> Secret:
        """Create (``create``) or replace a Secret, sealed, once durable; announced to ``subscribe_secrets``
        when its data changed. ``AlreadyExists`` / ``NotFound``."""
        current = self._latest_secret(secret.name)
        new = rules.stage_secret(current, secret, create=create)
        return await self._write_secret(secret.name, new, changed=current is None or new.version != current.version)

    async def delete_secret(self, name: str) -> None:
        if self._latest_secret(name) is None:
            raise NotFound(f"secret {name!r} not found")
        await self._write_secret(name, None, changed=True)

    async def _write_secret(self, name: str, new: Secret | None, *, changed: bool) -> Secret:
        self._seq += 1
        seq = self._seq
        self._secrets_pending[name] = (seq, new)
        if new is None:

            def run(conn: sqlite3.Connection) -> Any:
                return conn.execute("DELETE FROM secrets WHERE name = ?", (name,))

        else:
            body = seal_secret(new, self.cipher)

            def run(conn: sqlite3.Connection) -> Any:
                return conn.execute(
                    "INSERT INTO secrets (name, body) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                    (name, body),
                )

        def after(_: Any) -> Secret:
            if self._secrets_pending.get(name, (None,))[0] == seq:
                del self._secrets_pending[name]
            if new is None:
                self._secrets.pop(name, None)
            else:
                self._secrets[name] = new.copy()
            if changed:
                announce(self._secret_subscribers, name, log)
            return new.copy() if new is not None else Secret(name, {})

        return await self._submit(run, after)

    def subscribe_feed(self) -> Subscription[Change | AgentEvent]:
        """Record changes and events together, in resourceVersion order (what the watch hub serves)."""
        queue: Subscription[Change | AgentEvent] = Subscription(self._buffer)
        self._feed_subscribers.add(queue)
        return queue

    def unsubscribe_feed(self, queue: Subscription[Change | AgentEvent]) -> None:
        self._feed_subscribers.discard(queue)

    def subscribe(self, name: str | None = None) -> Subscription[Change]:
        return self._subscribers.subscribe(name)

    def unsubscribe(self, queue: Subscription[Change]) -> None:
        self._subscribers.unsubscribe(queue)

    def _notify(self, change: Change) -> None:
        if change.type == "DELETED":
            self._cache.pop(change.agent.name, None)
        else:
            self._cache[change.agent.name] = change.agent.copy()
        self._subscribers.announce(change)
        announce(self._feed_subscribers, change, log)


def _reseal(
    conn: sqlite3.Connection, cipher: SecretCipher, defaults: SpecDefaults
) -> tuple[builtins.list[Agent], builtins.list[Secret]]:
    """Load every record and Secret; seal again, in one transaction, those stored in plain text (a store
    from before sealing) or under a key that is no longer primary (``parallax secrets rotate-key``). After
    sealing again the file is vacuumed, so no old page still holds what was replaced."""
    agents: builtins.list[Agent] = []
    secrets: builtins.list[Secret] = []
    stale_agents: builtins.list[Agent] = []
    stale_secrets: builtins.list[Secret] = []
    for (manifest,) in conn.execute("SELECT manifest FROM agents"):
        agent, stale = open_manifest(manifest, cipher, defaults)
        agents.append(agent)
        if stale:
            stale_agents.append(agent)
    for (body,) in conn.execute("SELECT body FROM secrets"):
        secret, stale = open_secret(body, cipher)
        secrets.append(secret)
        if stale:
            stale_secrets.append(secret)
    if not stale_agents and not stale_secrets:
        return agents, secrets
    conn.execute("BEGIN IMMEDIATE")
    try:
        for agent in stale_agents:
            conn.execute("UPDATE agents SET manifest = ? WHERE name = ?", (seal_manifest(agent, cipher), agent.name))
        for secret in stale_secrets:
            conn.execute("UPDATE secrets SET body = ? WHERE name = ?", (seal_secret(secret, cipher), secret.name))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    log.info(
        "store: sealed %d agents' env and %d secrets with key %s", len(stale_agents), len(stale_secrets), cipher.primary
    )
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return agents, secrets


class _MemoryView:
    """The ``store_rules.View`` of a ``SqliteStore``: its committed records plus the writes queued for
    the next commit."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def latest(self, name: str) -> Agent | None:
        """The record as the next write must see it: the last one queued, else the committed one."""
        pending = self._store._pending.get(name)
        return pending[1] if pending is not None else self._store._cache.get(name)

    def committed(self, name: str) -> Agent | None:
        return self._store._cache.get(name)

    def owner(self, container: str) -> str | None:
        return self._store._owners.get(container)
