"""The PostgreSQL store (``PARALLAX_STORE=postgresql://…``): the contract of ``controller.store.interface``
on a database several controllers share, so a standby can take over (``controller.store.lease``).

- **resourceVersion** is one counter row (``parallax_meta``) that every write transaction locks first
  (``SELECT … FOR UPDATE``) and moves by the number of changes it commits. A PostgreSQL ``SEQUENCE`` is
  not transactional: its numbers are handed out in call order but committed in any order, with gaps, so
  a watcher resuming from version 10 could miss a version 9 committed after it. The locked counter makes
  versions gapless and in commit order, like etcd's revision; the lock is held for one group commit.
- **Group commit**: a write is queued and answered once the transaction it joined commits. Every
  write queued while one transaction runs goes into the next (at most ``MAX_BATCH``), checked in call
  order by ``controller.store.rules`` inside that transaction, against the rows as they are after the
  counter is locked (nothing else can write then) plus the writes before it in the batch. So
  compare-and-set, name ownership and ``update(build)`` hold across every controller on the database.
- **The change feed**: each committed change is also a row of ``parallax_changes`` (resourceVersion,
  kind, record or event), and the transaction ends with ``pg_notify``. Each controller keeps the
  committed records in memory (reads never touch the database) and follows the table: its own commits
  at once, other controllers' on the notification (or at the latest a second later), in version order.
  A controller that fell further behind than the table keeps reloads everything and cuts its
  subscribers off (they re-list), like the watch cache's 410.
- **Schema migrations** are numbered (``MIGRATIONS``), recorded in ``parallax_schema``, applied at open
  under an advisory lock (two controllers starting together apply them once); a database migrated by a
  newer controller is refused.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

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
    StoreError,
    StoreUnavailable,
    Subscription,
    Write,
    announce,
)
from controller.store.sealed import open_manifest, open_secret, seal_manifest, seal_secret
from controller.store.secret_reads import SecretReads

log = logging.getLogger("parallax.store.postgres")

MIGRATIONS: list[str] = [
    # 1: records, the version counter, events, the change feed, the leader lease
    """
    CREATE TABLE parallax_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO parallax_meta (key, value) VALUES ('resourceVersion', 0);
    CREATE TABLE parallax_agents (
        name TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        container_name TEXT NOT NULL UNIQUE,
        rv BIGINT NOT NULL,
        manifest TEXT NOT NULL
    );
    CREATE TABLE parallax_events (
        id BIGSERIAL PRIMARY KEY,
        agent TEXT NOT NULL,
        uid TEXT NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        count INTEGER NOT NULL,
        first_ts TEXT NOT NULL,
        last_ts TEXT NOT NULL,
        last_epoch DOUBLE PRECISION NOT NULL,
        rv BIGINT NOT NULL,
        labels TEXT NOT NULL
    );
    CREATE INDEX parallax_events_by_agent ON parallax_events (agent, rv);
    CREATE TABLE parallax_changes (
        rv BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        spec_changed BOOLEAN NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE parallax_leases (
        name TEXT PRIMARY KEY,
        holder TEXT,
        address TEXT,
        acquired_at TIMESTAMPTZ,
        renewed_at TIMESTAMPTZ,
        duration_s DOUBLE PRECISION NOT NULL,
        transitions BIGINT NOT NULL DEFAULT 0
    );
    """,
    # 2: Secrets (their values sealed, controller.store.cipher)
    """
    CREATE TABLE parallax_secrets (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    """,
]
"""Schema migrations, in order: migration ``i`` brings the schema to version ``i + 1``. Never edit one
that was released; append a new one."""

CHANGES_KEPT = 20000
"""Rows of ``parallax_changes`` kept: how far a controller may fall behind the others and still catch
up from the table instead of reloading everything."""
TRIM_EVERY = 64
"""Trim the change table (and expired events) once in this many transactions."""
POLL_SECONDS = 1.0
"""Follow the table this often even without a notification (a lost one costs at most this long)."""
PING_ATTEMPTS = 9
"""Pool connections tried before a write (the pool's 8, and one new)."""

_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
"""What the database or the network may raise: the store answers ``StoreUnavailable``."""


def shown(dsn: str) -> str:
    """The URL for a message: without its password or query."""
    from controller.config import _shown

    return _shown(dsn)


def _lock_key(schema: str, what: str) -> int:
    """An advisory lock key of this store's schema (stores in other schemas of the database are others)."""
    return zlib.crc32(f"parallax:{schema}:{what}".encode()) - (1 << 31)


@dataclass
class _Request:
    """A write waiting for the next group commit: ``stage`` checks it (in the transaction, in call order)
    and says what to write; ``answer`` turns the staged records into the caller's answer."""

    stage: Callable[[_TxView, int], builtins.list[Staged] | None]
    answer: Callable[[builtins.list[Staged] | None], Any]
    future: asyncio.Future[Any]
    seen: dict[str, Agent | None]
    """The committed records this write names, as this controller knew them when it was called: what a
    client can have read (``rules.check_rv``'s ``committed``)."""
    event: _EventRequest | None = None


@dataclass
class _EventRequest:
    agent: str
    uid: str
    type: str
    reason: str
    message: str
    labels: str
    epoch: float
    stamp: str
    result: AgentEvent | None = None


@dataclass
class _Batch:
    """What one transaction writes, collected while its requests are staged."""

    rv: int
    changes: builtins.list[Change | AgentEvent] = field(default_factory=list)
    final: dict[str, Agent | None] = field(default_factory=dict)  # name -> record, None: purged


class _TxView:
    """The ``rules.View`` inside a transaction: the records as committed (this controller's cache, caught
    up under the counter's lock, so the database's) plus what the batch staged before."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.records: dict[str, Agent | None] = {}
        self.owners: dict[str, str | None] = {}
        self.seen: dict[str, Agent | None] = {}

    def latest(self, name: str) -> Agent | None:
        return self.records[name] if name in self.records else self.store._cache.get(name)

    def committed(self, name: str) -> Agent | None:
        return self.seen[name] if name in self.seen else self.store._cache.get(name)

    def owner(self, container: str) -> str | None:
        if container in self.owners:
            return self.owners[container]
        return self.store._owners.get(container)

    def add(self, staged: Staged) -> None:
        change = staged.change
        if change is None:
            return
        self.records[staged.name] = None if change.type == "DELETED" else change.agent
        if change.type == "ADDED":
            self.owners[container_name(staged.name)] = staged.name
        elif change.type == "DELETED":
            self.owners[container_name(staged.name)] = None


class PostgresStore(SecretReads):
    """PostgreSQL through asyncpg: a pool for transactions and reads, and one connection that LISTENs."""

    MAX_BATCH = 512

    def __init__(
        self,
        dsn: str,
        defaults: SpecDefaults,
        *,
        buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
        cipher: SecretCipher | None = None,
    ) -> None:
        self.dsn = dsn
        self._cipher = cipher
        """Seals secret material before it reaches the database; None: the default key file."""
        self._secrets: dict[str, Secret] = {}
        self._secret_digests: dict[str, str] = {}  # name -> md5 of the stored body, to follow other writers
        self._secret_subscribers: set[Subscription[str]] = set()
        self._defaults = defaults
        self._buffer = buffer
        self._pool: asyncpg.Pool | None = None
        self.schema = "public"
        self.channel = "parallax_changes"
        self._subscribers = ChangeSubscribers(self._buffer, log)
        self._feed_subscribers: set[Subscription[Change | AgentEvent]] = set()
        self._cache: dict[str, Agent] = {}
        self._owners: dict[str, str] = {}
        self._known_rv = 0
        self._queue: list[_Request] = []
        self._flusher: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._catching_up = asyncio.Lock()
        self._closing = False
        self.write_error: str | None = None
        self.batches = 0
        """Transactions committed so far (the benchmarks print writes per batch)."""

    # -- opening ---------------------------------------------------------------------------------

    async def connect(self, **options: Any) -> asyncpg.Connection:
        """A connection of its own (the lease's, the listener's), with this store's settings."""
        try:
            return await asyncpg.connect(self.dsn, timeout=5, command_timeout=10, **options)
        except (*_ERRORS, ValueError) as exc:
            raise StoreUnavailable(f"cannot connect to {shown(self.dsn)}: {_reason(exc)}") from exc

    @property
    def cipher(self) -> SecretCipher:
        if self._cipher is None:
            raise StoreUnavailable("store is not open")
        return self._cipher

    async def open(self) -> None:
        if self._cipher is None:
            from controller.config import default_store_path
            from controller.store.sqlite import default_key_file

            try:
                self._cipher = SecretCipher.load(default_key_file(default_store_path()))
            except CipherError as exc:
                raise StoreUnavailable(str(exc)) from exc
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=8, timeout=5, command_timeout=10, max_inactive_connection_lifetime=60
            )
        except (*_ERRORS, ValueError) as exc:
            raise StoreUnavailable(f"cannot connect to {shown(self.dsn)}: {_reason(exc)}") from exc
        try:
            async with self.connection() as conn:
                schema = await conn.fetchval("SELECT current_schema()")
                if schema is None:
                    raise StoreUnavailable(f"{shown(self.dsn)}: its search_path names no schema that exists")
                self.schema = str(schema)
                self.channel = "parallax_changes" if self.schema == "public" else f"parallax_changes_{self.schema}"
                await migrate(conn, self.schema)
                await self._reseal(conn)
            await self._reload()
            await self._sync_secrets()
        except CipherError as exc:
            await self._pool.close()
            self._pool = None
            raise StoreUnavailable(f"store at {shown(self.dsn)}: {exc}") from exc
        except _ERRORS as exc:
            await self._pool.close()
            self._pool = None
            raise StoreUnavailable(f"cannot open the store at {shown(self.dsn)}: {_reason(exc)}") from exc
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._follower = asyncio.create_task(self._follow(), name="store-follow")

    async def _reload(self) -> None:
        """Load every record and the version they are at, in one snapshot."""
        async with self.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rv = await conn.fetchval("SELECT value FROM parallax_meta WHERE key = 'resourceVersion'")
            rows = await conn.fetch("SELECT manifest FROM parallax_agents")
        self._cache = {agent.name: agent for agent in (self._load(row[0]) for row in rows)}
        self._owners = {container_name(name): name for name in self._cache}
        self._known_rv = int(rv)

    async def close(self) -> None:
        await self._idle.wait()
        self._closing = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except TimeoutError:  # a connection stuck on a database that does not answer
                self._pool.terminate()
            self._pool = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool; one that failed in any way is closed, never handed out again (a
        connection whose server went away mid-statement is left in a state it cannot leave)."""
        conn = await self._answering()
        try:
            yield conn
        except BaseException:
            conn.terminate()
            raise
        finally:
            await self.pool.release(conn)

    async def _answering(self) -> asyncpg.Connection:
        """A pool connection that answers a ``SELECT 1``. One whose server process ended while it sat in the
        pool (PostgreSQL restarted, or the backend was terminated) is closed and another taken: asyncpg
        notices only at the next use ("another operation is in progress"), and that use was the first
        write after a restart, refused for nothing. Nothing of a write has been sent when this fails."""
        for _ in range(PING_ATTEMPTS):
            conn = await self.pool.acquire(timeout=10)
            try:
                await conn.execute("SELECT 1")
                return conn
            except _ERRORS:
                conn.terminate()
                await self.pool.release(conn)
        return await self.pool.acquire(timeout=10)  # the caller's own use fails, and says why

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        return self._pool

    async def ping(self) -> None:
        try:
            async with self.connection() as conn:
                await conn.fetchval("SELECT 1")
        except _ERRORS as exc:
            raise StoreUnavailable(f"store unreachable: {_reason(exc)}") from exc

    def _load(self, manifest: str) -> Agent:
        return open_manifest(manifest, self.cipher, self._defaults)[0]

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, name: str) -> Agent:
        agent = self._cache.get(name)
        if agent is None:
            raise NotFound(f"agent {name!r} not found")
        return agent.copy()

    async def list(self) -> builtins.list[Agent]:
        return [self._cache[name] for name in sorted(self._cache)]

    async def current_rv(self) -> int:
        return self._known_rv

    async def list_events(self, name: str, uid: str | None = None) -> builtins.list[AgentEvent]:
        query = (
            "SELECT agent, uid, type, reason, message, count, first_ts, last_ts, rv, labels FROM parallax_events "
            "WHERE agent = $1 AND ($2::text IS NULL OR uid = $2) AND last_epoch >= $3 ORDER BY rv"
        )
        try:
            async with self.connection() as conn:
                rows = await conn.fetch(query, name, uid, time.time() - EVENT_TTL_SECONDS)
        except _ERRORS as exc:
            raise StoreUnavailable(f"store unreadable: {_reason(exc)}") from exc
        return [
            AgentEvent(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], int(r[8]), json.loads(r[9])) for r in rows
        ]

    # -- following the change table ---------------------------------------------------------------

    async def _follow(self) -> None:
        """LISTEN for other controllers' commits and apply them in version order; poll as a safety net."""
        while not self._closing:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.connect()
                await conn.add_listener(self.channel, lambda *_: self._poke.set())
                while not conn.is_closed() and not self._closing:
                    self._poke.clear()
                    await self._catch_up()
                    await self._sync_secrets()
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the task's
                    # cancellation when it comes as the wait ends, and close() then waited for ever
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_SECONDS):
                            await self._poke.wait()
            except (StoreError, CipherError, *_ERRORS) as exc:
                log.warning("following the store's changes: %s; again in 1 s", _reason(exc))
                await asyncio.sleep(1)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)

    async def _catch_up(self, conn: asyncpg.Connection | None = None) -> None:
        """Apply every change committed after ``_known_rv`` (``conn``: inside the writer's transaction)."""
        if conn is None:
            async with self._catching_up, self.connection() as own:
                await self._catch_up_on(own)
        else:
            await self._catch_up_on(conn)

    async def _catch_up_on(self, conn: asyncpg.Connection) -> None:
        while True:
            # The counter first: a change committed up to it is in the table for the next statement (its
            # row commits with the counter), so an empty answer below really means the rows were trimmed.
            top = int(await conn.fetchval("SELECT value FROM parallax_meta WHERE key = 'resourceVersion'"))
            if top <= self._known_rv:
                return
            rows = await conn.fetch(
                "SELECT rv, kind, name, spec_changed, body FROM parallax_changes WHERE rv > $1 AND rv <= $2 "
                "ORDER BY rv LIMIT 1000",
                self._known_rv,
                top,
            )
            for row in rows:
                rv = int(row["rv"])
                if rv <= self._known_rv:
                    continue  # applied meanwhile (this controller's own commit, or another catch-up)
                if rv != self._known_rv + 1:
                    await self._lost(f"the change table no longer holds version {self._known_rv + 1}")
                    return
                self._apply(self._decode(row), rv)
            if self._known_rv < top and not rows:
                await self._lost(f"the change table no longer holds versions after {self._known_rv}")
                return
            if len(rows) < 1000:
                return

    def _decode(self, row: asyncpg.Record) -> Change | AgentEvent:
        if row["kind"] == "EVENT":
            return AgentEvent(**json.loads(row["body"]))
        return Change(row["kind"], self._load(row["body"]), bool(row["spec_changed"]))

    def _apply(self, item: Change | AgentEvent, rv: int) -> None:
        """A committed change at version ``rv`` (the next one): into the cache and to the subscribers."""
        self._known_rv = rv
        if isinstance(item, AgentEvent):
            announce(self._feed_subscribers, item, log)
            return
        name = item.agent.name
        if item.type == "DELETED":
            self._cache.pop(name, None)
            if self._owners.get(container_name(name)) == name:
                del self._owners[container_name(name)]
        else:
            self._cache[name] = item.agent.copy()
            self._owners[container_name(name)] = name
        self._subscribers.announce(item)
        announce(self._feed_subscribers, item, log)

    async def _lost(self, why: str) -> None:
        """Fell behind further than the change table reaches: reload, and cut every subscriber off (they
        re-list, as after a watch's 410)."""
        log.warning("%s: reloading every record; every subscriber must re-list", why)
        await self._reload()
        self._subscribers.cut_all(f"missed changes ({why})")
        for feed in self._feed_subscribers:
            feed.cut(f"missed changes ({why})")
        self._feed_subscribers.clear()

    # -- writing -----------------------------------------------------------------------------------

    def _enqueue(
        self,
        stage: Callable[[_TxView, int], builtins.list[Staged] | None],
        answer: Callable[[builtins.list[Staged] | None], Any],
        names: Sequence[str] = (),
        event: _EventRequest | None = None,
    ) -> asyncio.Future[Any]:
        if self._pool is None or self._closing:
            raise StoreUnavailable("store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        seen = {name: self._cache.get(name) for name in names}
        self._queue.append(_Request(stage, answer, future, seen, event))
        if self._flusher is None:
            self._idle.clear()
            self._flusher = asyncio.create_task(self._flush(), name="store-group-commit")
        return future

    async def _submit(
        self,
        stage: Callable[[_TxView, int], builtins.list[Staged] | None],
        answer: Callable[[builtins.list[Staged] | None], Any],
        names: Sequence[str] = (),
    ) -> Any:
        # Queued: a caller that gives up does not take it back.
        return await asyncio.shield(self._enqueue(stage, answer, names))

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
                try:
                    results = await self._commit(batch)
                except (*_ERRORS, StoreError) as exc:
                    error = f"store unwritable: {_reason(exc)}"
                    self.write_error = error
                    log.warning("%s; %d writes refused", error, len(batch))
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(StoreUnavailable(error))
                    continue
                except BaseException as exc:
                    for request in batch + self._queue:
                        if not request.future.done():
                            request.future.set_exception(StoreUnavailable(f"store write failed: {exc!r}"))
                    self._queue = []
                    raise
                self.write_error = None
                self.batches += 1
                for request, result in zip(batch, results, strict=True):
                    if request.future.done():
                        continue
                    if isinstance(result, BaseException):
                        request.future.set_exception(result)
                    else:
                        request.future.set_result(result)
        finally:
            self._flusher = None
            self._idle.set()

    async def _commit(self, batch: builtins.list[_Request]) -> builtins.list[Any]:
        """One transaction for the batch: lock the counter, catch up, stage each request in order, write,
        commit; then apply and announce the changes and answer (errors per request are answers too)."""
        async with self.connection() as conn, conn.transaction():
            top = int(await conn.fetchval("SELECT value FROM parallax_meta WHERE key = 'resourceVersion' FOR UPDATE"))
            if top != self._known_rv:
                await self._catch_up(conn)
            start = self._known_rv
            view = _TxView(self)
            out = _Batch(start)
            staged_all: builtins.list[builtins.list[Staged] | BaseException | None] = []
            for request in batch:
                if request.event is not None:
                    staged_all.append(None)
                    await self._stage_event(conn, request.event, out)
                    continue
                view.seen = request.seen
                try:
                    staged = request.stage(view, out.rv + 1)
                except Exception as exc:  # refused (StoreError) or build failed: this request only
                    staged_all.append(exc)
                    continue
                staged_all.append(staged)
                for one in staged or []:
                    view.add(one)
                    if one.change is not None:
                        out.rv += 1
                        out.changes.append(one.change)
                        out.final[one.name] = None if one.change.type == "DELETED" else one.change.agent
            if out.rv > start:
                await self._write(conn, out, start)
            # committed
        for item, rv in zip(out.changes, range(start + 1, out.rv + 1), strict=True):
            if rv > self._known_rv:
                self._apply(item, rv)
        results: builtins.list[Any] = []
        for request, outcome in zip(batch, staged_all, strict=True):
            if request.event is not None:
                results.append(request.event.result)
            elif isinstance(outcome, BaseException):
                results.append(outcome)
            else:
                try:
                    results.append(request.answer(outcome))
                except Exception as exc:
                    results.append(exc)
        return results

    async def _write(self, conn: asyncpg.Connection, out: _Batch, start: int) -> None:
        gone = [name for name, agent in out.final.items() if agent is None]
        kept = [agent for agent in out.final.values() if agent is not None]
        if gone:
            await conn.execute("DELETE FROM parallax_agents WHERE name = ANY($1::text[])", gone)
        if kept:
            await conn.execute(
                "INSERT INTO parallax_agents (name, uid, container_name, rv, manifest) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) "
                "ON CONFLICT (name) DO UPDATE SET uid = excluded.uid, rv = excluded.rv, manifest = excluded.manifest",
                [a.name for a in kept],
                [a.metadata.uid for a in kept],
                [container_name(a.name) for a in kept],
                [a.metadata.resource_version for a in kept],
                [seal_manifest(a, self.cipher) for a in kept],
            )
        rows: builtins.list[tuple[int, str, str, bool, str]] = []
        for rv, item in zip(range(start + 1, out.rv + 1), out.changes, strict=True):
            if isinstance(item, AgentEvent):
                body = dataclasses.asdict(item)
                rows.append((rv, "EVENT", item.agent, False, json.dumps(body)))
            else:
                manifest = seal_manifest(item.agent, self.cipher)
                rows.append((rv, item.type, item.agent.name, item.spec_changed, manifest))
        await conn.execute(
            "INSERT INTO parallax_changes (rv, kind, name, spec_changed, body) "
            "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::boolean[], $5::text[])",
            *(list(column) for column in zip(*rows, strict=True)),
        )
        trim = self.batches % TRIM_EVERY == 0
        await conn.execute(
            "UPDATE parallax_meta SET value = $1 WHERE key = 'resourceVersion'",
            out.rv,
        )
        if trim:
            await conn.execute("DELETE FROM parallax_changes WHERE rv <= $1", out.rv - CHANGES_KEPT)
            await conn.execute("DELETE FROM parallax_events WHERE last_epoch < $1", time.time() - EVENT_TTL_SECONDS)
        await conn.execute("SELECT pg_notify($1, $2)", self.channel, str(out.rv))

    async def _stage_event(self, conn: asyncpg.Connection, ev: _EventRequest, out: _Batch) -> None:
        rv = out.rv + 1
        row = await conn.fetchrow(
            "SELECT id, count, first_ts FROM parallax_events WHERE agent = $1 AND uid = $2 AND type = $3 "
            "AND reason = $4 AND message = $5 AND last_epoch >= $6 ORDER BY id DESC LIMIT 1",
            ev.agent,
            ev.uid,
            ev.type,
            ev.reason,
            ev.message,
            ev.epoch - EVENT_AGGREGATE_SECONDS,
        )
        if row is not None:
            count, first = int(row["count"]) + 1, str(row["first_ts"])
            await conn.execute(
                "UPDATE parallax_events SET count = $1, last_ts = $2, last_epoch = $3, rv = $4, labels = $5 "
                "WHERE id = $6",
                count,
                ev.stamp,
                ev.epoch,
                rv,
                ev.labels,
                row["id"],
            )
        else:
            count, first = 1, ev.stamp
            await conn.execute(
                "INSERT INTO parallax_events (agent, uid, type, reason, message, count, first_ts, last_ts, "
                "last_epoch, rv, labels) VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $8, $9)",
                ev.agent,
                ev.uid,
                ev.type,
                ev.reason,
                ev.message,
                ev.stamp,
                ev.epoch,
                rv,
                ev.labels,
            )
            await conn.execute(
                "DELETE FROM parallax_events WHERE agent = $1 AND id NOT IN "
                "(SELECT id FROM parallax_events WHERE agent = $1 ORDER BY rv DESC LIMIT $2)",
                ev.agent,
                EVENTS_PER_AGENT,
            )
        ev.result = AgentEvent(
            ev.agent, ev.uid, ev.type, ev.reason, ev.message, count, first, ev.stamp, rv, json.loads(ev.labels)
        )
        out.rv = rv
        out.changes.append(ev.result)

    # The writes: each is staged by controller.store.rules in the transaction, in call order.

    async def create(self, agent: Agent) -> Agent:
        return await self._submit(lambda view, rv: [rules.stage_create(view, agent, rv)], _first, [agent.name])  # type: ignore[no-any-return]

    async def replace(self, agent: Agent, *, expected_rv: str | None = None) -> Agent:
        return await self._submit(  # type: ignore[no-any-return]
            lambda view, rv: [rules.stage_replace(view, agent, expected_rv, rv)], _first, [agent.name]
        )

    async def update(self, name: str, build: Callable[[Agent], Agent], *, expected_rv: str | None = None) -> Agent:
        return await self._submit(  # type: ignore[no-any-return]
            lambda view, rv: [rules.stage_update(view, name, build, expected_rv, rv)], _first, [name]
        )

    async def mark_deleted(self, name: str, *, expected_rv: str | None = None) -> Agent:
        return await self._submit(  # type: ignore[no-any-return]
            lambda view, rv: [rules.stage_delete(view, name, expected_rv, rv)], _first, [name]
        )

    async def write_all(self, writes: Sequence[Write]) -> builtins.list[Agent]:
        for write in writes:  # a malformed request is the caller's error, before anything is queued
            if write.op != "delete" and write.agent is None:
                raise ValueError(f"a {write.op} needs the agent")
        return await self._submit(  # type: ignore[no-any-return]
            lambda view, rv: rules.stage_all(view, writes, rv),
            lambda staged: [item.answer.copy() for item in staged or []],
            [write.name for write in writes],
        )

    async def update_status(self, name: str, uid: str, status: dict[str, Any]) -> Agent | None:
        current = self._cache.get(name)
        if current is not None and current.metadata.uid == uid and current.status == status and self._flusher is None:
            return current.copy()  # the steady state: nothing to write, nothing to wait for

        def stage(view: _TxView, rv: int) -> builtins.list[Staged] | None:
            staged = rules.stage_status(view, name, uid, status, rv)
            return None if staged is None else [staged]

        return await self._submit(stage, lambda staged: None if staged is None else staged[0].answer.copy(), [name])  # type: ignore[no-any-return]

    async def record_activity(self, name: str, at: str) -> Agent | None:
        def stage(view: _TxView, rv: int) -> builtins.list[Staged] | None:
            staged = rules.stage_activity(view, name, at, rv)
            return None if staged is None else [staged]

        return await self._submit(stage, lambda staged: None if staged is None else staged[0].answer.copy(), [name])  # type: ignore[no-any-return]

    async def purge(self, name: str, uid: str) -> bool:
        def stage(view: _TxView, rv: int) -> builtins.list[Staged] | None:
            staged = rules.stage_purge(view, name, uid, rv)
            return None if staged is None else [staged]

        return await self._submit(stage, lambda staged: staged is not None, [name])  # type: ignore[no-any-return]

    async def record_event(self, agent: Agent, type_: str, reason: str, message: str) -> AgentEvent:
        request = _EventRequest(
            agent.name,
            agent.metadata.uid,
            type_,
            reason,
            message,
            json.dumps(agent.metadata.labels, sort_keys=True),
            time.time(),
            now_iso(),
        )
        future = self._enqueue(_no_stage, _no_answer, (), request)
        event: AgentEvent = await asyncio.shield(future)
        return event

    # -- sealing -------------------------------------------------------------------------------------

    async def _reseal(self, conn: asyncpg.Connection) -> None:
        """Seal everything again when the database was not sealed with this key ring's primary key (a
        store from before sealing, or after ``parallax secrets rotate-key``): every record and Secret, in
        one transaction under the counter's lock (so no write interleaves); the change table's records
        are dropped (controllers following it reload, as after a 410), so none is left in plain text or
        under a retired key. ``parallax_meta.sealedKey`` remembers the key, so a start without a new key
        does none of this."""
        primary = int(self.cipher.primary, 16)
        async with conn.transaction():
            await conn.fetchval("SELECT value FROM parallax_meta WHERE key = 'resourceVersion' FOR UPDATE")
            if await conn.fetchval("SELECT value FROM parallax_meta WHERE key = 'sealedKey'") == primary:
                return
            agents = await conn.fetch("SELECT name, manifest FROM parallax_agents")
            for row in agents:
                agent, _ = open_manifest(row["manifest"], self.cipher, self._defaults)
                await conn.execute(
                    "UPDATE parallax_agents SET manifest = $2 WHERE name = $1",
                    row["name"],
                    seal_manifest(agent, self.cipher),
                )
            secrets = await conn.fetch("SELECT name, body FROM parallax_secrets")
            for row in secrets:
                secret, _ = open_secret(row["body"], self.cipher)
                await conn.execute(
                    "UPDATE parallax_secrets SET body = $2 WHERE name = $1",
                    row["name"],
                    seal_secret(secret, self.cipher),
                )
            await conn.execute("DELETE FROM parallax_changes WHERE kind <> 'EVENT'")
            await conn.execute(
                "INSERT INTO parallax_meta (key, value) VALUES ('sealedKey', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                primary,
            )
        log.info("store sealed with key %s: %d agents, %d secrets", self.cipher.primary, len(agents), len(secrets))

    # -- Secrets ---------------------------------------------------------------------------------------

    async def put_secret(self, secret: Secret, *, create: bool) -> Secret:
        """Create or replace a Secret in its own transaction (the row locked, so two writers of one
        Secret are ordered; two creates: one gets ``AlreadyExists``); announced to every controller."""
        try:
            async with self.connection() as conn, conn.transaction():
                row = await conn.fetchrow("SELECT body FROM parallax_secrets WHERE name = $1 FOR UPDATE", secret.name)
                current = open_secret(row["body"], self.cipher)[0] if row is not None else None
                new = rules.stage_secret(current, secret, create=create)
                body = seal_secret(new, self.cipher)
                if current is None:
                    try:
                        await conn.execute("INSERT INTO parallax_secrets (name, body) VALUES ($1, $2)", new.name, body)
                    except asyncpg.UniqueViolationError as exc:
                        raise rules.AlreadyExists(f"secret {secret.name!r} already exists") from exc
                else:
                    await conn.execute("UPDATE parallax_secrets SET body = $2 WHERE name = $1", new.name, body)
                await conn.execute("SELECT pg_notify($1, 'secret')", self.channel)
        except CipherError as exc:
            raise StoreUnavailable(str(exc)) from exc
        except _ERRORS as exc:
            raise StoreUnavailable(f"store unwritable: {_reason(exc)}") from exc
        self._secret_changed(new, _digest(body), changed=current is None or current.version != new.version)
        return new.copy()

    async def delete_secret(self, name: str) -> None:
        try:
            async with self.connection() as conn, conn.transaction():
                gone = await conn.fetchval("DELETE FROM parallax_secrets WHERE name = $1 RETURNING name", name)
                if gone is not None:
                    await conn.execute("SELECT pg_notify($1, 'secret')", self.channel)
        except _ERRORS as exc:
            raise StoreUnavailable(f"store unwritable: {_reason(exc)}") from exc
        if gone is None:
            raise NotFound(f"secret {name!r} not found")
        if self._secrets.pop(name, None) is not None:
            self._secret_digests.pop(name, None)
            announce(self._secret_subscribers, name, log)

    def _secret_changed(self, secret: Secret, digest: str, *, changed: bool) -> None:
        if self._secret_digests.get(secret.name) == digest:
            return  # the follower saw it first
        self._secrets[secret.name] = secret.copy()
        self._secret_digests[secret.name] = digest
        if changed:
            announce(self._secret_subscribers, secret.name, log)

    async def _sync_secrets(self) -> None:
        """Follow other controllers' Secret writes: compare each stored body's digest with the one known,
        load what differs (the values travel only sealed), announce those whose data changed."""
        async with self.connection() as conn:
            rows = await conn.fetch("SELECT name, md5(body) AS digest FROM parallax_secrets")
            stored = {row["name"]: row["digest"] for row in rows}
            changed = [name for name, digest in stored.items() if self._secret_digests.get(name) != digest]
            bodies = (
                await conn.fetch("SELECT name, body FROM parallax_secrets WHERE name = ANY($1::text[])", changed)
                if changed
                else []
            )
        for row in bodies:
            try:
                secret, _ = open_secret(row["body"], self.cipher)
            except CipherError as exc:
                log.warning("secret %s written by another controller cannot be read: %s", row["name"], exc)
                continue
            before = self._secrets.get(secret.name)
            self._secret_changed(
                secret,
                _digest(row["body"]),
                changed=before is None or (before.uid, before.version) != (secret.uid, secret.version),
            )
        for name in [name for name in self._secrets if name not in stored]:
            del self._secrets[name]
            self._secret_digests.pop(name, None)
            announce(self._secret_subscribers, name, log)

    # -- subscribing ---------------------------------------------------------------------------------

    def subscribe(self, name: str | None = None) -> Subscription[Change]:
        return self._subscribers.subscribe(name)

    def unsubscribe(self, queue: Subscription[Change]) -> None:
        self._subscribers.unsubscribe(queue)

    def subscribe_feed(self) -> Subscription[Change | AgentEvent]:
        queue: Subscription[Change | AgentEvent] = Subscription(self._buffer)
        self._feed_subscribers.add(queue)
        return queue

    def unsubscribe_feed(self, queue: Subscription[Change | AgentEvent]) -> None:
        self._feed_subscribers.discard(queue)


def _digest(body: str) -> str:
    """What PostgreSQL's ``md5(body)`` answers."""
    return hashlib.md5(body.encode()).hexdigest()


def _first(staged: builtins.list[Staged] | None) -> Agent:
    assert staged
    return staged[0].answer.copy()


def _no_stage(view: _TxView, rv: int) -> None:
    return None


def _no_answer(staged: builtins.list[Staged] | None) -> None:
    return None


def _reason(exc: BaseException) -> str:
    """The database's or the network's error, one line, for a message (asyncpg's never carry the URL)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


async def schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('parallax_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM parallax_schema"))


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Apply the migrations the schema lacks, each in its own transaction, under an advisory lock (a
    controller starting meanwhile waits, then finds them applied). The version it is at now."""
    key = _lock_key(schema, "migrate")
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS parallax_schema "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await schema_version(conn)
        if current > len(MIGRATIONS):
            raise StoreUnavailable(
                f"the database's schema is at version {current}, newer than this controller knows "
                f"({len(MIGRATIONS)}): run the newer controller"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute("INSERT INTO parallax_schema (version) VALUES ($1)", version)
            log.info("store schema migrated to version %d", version)
        return len(MIGRATIONS)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
