"""Leader election: which of the controllers sharing a store runs the reconcile workers, the resync and
garbage collection. The others serve the whole API (their writes go to the shared database, their watches
follow it) and take over when the leader is gone.

``Leadership`` is the seam: the app runs ``run(start, stop)`` and the reconciler calls ``fence()`` before
every runtime write. A store only one process can open (SQLite's lock file) has ``AlwaysLeader``; the
PostgreSQL store has ``LeaseElection``, client-go's leaderelection on a row of ``parallax_leases``:

- A candidate takes the lease when nobody holds it or its holder has not renewed it for
  ``lease_duration`` (measured by the database's clock, so the controllers' clocks need not agree).
- The leader renews it every ``retry_period``. It leads until ``renew_deadline`` after the moment it
  *sent* its last successful renewal (by its own monotonic clock, which runs on while the process is
  stopped): so it stops acting at least ``lease_duration - renew_deadline`` before anyone else may start.
- ``fence()`` checks that deadline, synchronously, before every runtime write: a leader that was paused
  (SIGSTOP, a long GC, a partition) and wakes up after its deadline writes nothing, even before its
  election loop has noticed; it then stops its controller and becomes a candidate again.
- The lease's ``transitions`` count is the fencing token: it moves each time the lease changes hands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg

from controller.config import Settings
from controller.store.rules import StoreError

if TYPE_CHECKING:
    from controller.store.postgres import PostgresStore

log = logging.getLogger("parallax.leader")

LEASE_NAME = "parallax-controller"


class NotLeader(Exception):
    """A runtime write was about to be made by a controller that does not (or no longer) lead."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, as this process last saw it."""

    identity: str | None
    address: str | None
    transitions: int

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "address": self.address, "transitions": self.transitions}


def default_identity() -> str:
    """``host-pid-random``: unique even for two processes whose pids collide in containers."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Leadership(Protocol):
    identity: str
    address: str

    @property
    def leading(self) -> bool:
        """This process leads, and may write to the runtime now."""
        ...

    @property
    def holder(self) -> Holder | None:
        """Who leads, as last seen (None: nobody, or not known yet)."""
        ...

    transitions: int
    """Times this process started or stopped leading."""

    def fence(self) -> None:
        """``NotLeader`` unless this process leads now: called before every runtime write."""
        ...

    async def begin(self, start: Callable[[], Awaitable[None]]) -> None:
        """Lead at once when nobody else can (``AlwaysLeader``: before the server answers); otherwise
        nothing, ``run`` decides."""
        ...

    async def run(self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever: ``start()`` on becoming leader, ``stop()`` on losing it (cancel to end;
        ``release`` then hands the lease over)."""
        ...

    async def release(self) -> None:
        """Give the lease up (a clean shutdown: a standby takes over at its next retry)."""
        ...


class AlwaysLeader:
    """The one controller of a store nobody else can open: it leads from start to end."""

    def __init__(self, settings: Settings, address: str) -> None:
        self.identity = settings.identity or default_identity()
        self.address = address
        self.transitions = 0
        self._leading = False

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def holder(self) -> Holder | None:
        return Holder(self.identity, self.address, 1) if self._leading else None

    def fence(self) -> None:
        return None

    async def begin(self, start: Callable[[], Awaitable[None]]) -> None:
        if not self._leading:
            self._leading = True
            self.transitions += 1
            await start()

    async def run(self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
        await self.begin(start)
        await asyncio.Event().wait()

    async def release(self) -> None:
        self._leading = False


_ACQUIRE = """
INSERT INTO parallax_leases AS l (name, holder, address, acquired_at, renewed_at, duration_s, transitions)
VALUES ($1, $2, $3, now(), now(), $4, 1)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    address = excluded.address,
    acquired_at = CASE WHEN l.holder IS NOT DISTINCT FROM excluded.holder THEN l.acquired_at ELSE now() END,
    renewed_at = now(),
    duration_s = excluded.duration_s,
    transitions = l.transitions + CASE WHEN l.holder IS NOT DISTINCT FROM excluded.holder THEN 0 ELSE 1 END
WHERE l.holder = excluded.holder OR l.holder IS NULL
    OR l.renewed_at + make_interval(secs => l.duration_s) < now()
RETURNING transitions
"""

_OBSERVE = """
SELECT holder, address, transitions, renewed_at + make_interval(secs => duration_s) < now() AS expired
FROM parallax_leases WHERE name = $1
"""


class LeaseElection:
    """client-go's leaderelection over a row of the PostgreSQL store's ``parallax_leases``."""

    def __init__(self, store: PostgresStore, settings: Settings, address: str) -> None:
        self.store = store
        self.identity = settings.identity or default_identity()
        self.address = address
        self.lease_duration = settings.lease_duration_seconds
        self.renew_deadline = settings.renew_deadline_seconds
        self.retry_period = settings.retry_period_seconds
        self.transitions = 0
        self.term = 0
        """The lease's transitions count when this process took it: its fencing token."""
        self._leading = False
        self._valid_until = 0.0
        self._holder: Holder | None = None
        self._conn: asyncpg.Connection | None = None
        self.on_change: Callable[[bool], None] = lambda leading: None

    @property
    def leading(self) -> bool:
        return self._leading and time.monotonic() < self._valid_until

    @property
    def holder(self) -> Holder | None:
        if self.leading:
            return Holder(self.identity, self.address, self.term)
        return self._holder

    def fence(self) -> None:
        if not self.leading:
            raise NotLeader(f"{self.identity} does not hold the controller lease (any more): it writes nothing")

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self.store.connect()
        return self._conn

    async def _try(self) -> bool:
        """Take or renew the lease: True when this process holds it now."""
        conn = await self._connection()
        term = await conn.fetchval(_ACQUIRE, LEASE_NAME, self.identity, self.address, self.lease_duration)
        if term is not None:
            self.term = int(term)
            return True
        row = await conn.fetchrow(_OBSERVE, LEASE_NAME)
        self._holder = (
            None
            if row is None or row["holder"] is None or row["expired"]
            else Holder(row["holder"], row["address"], int(row["transitions"]))
        )
        return False

    async def begin(self, start: Callable[[], Awaitable[None]]) -> None:
        return None

    async def run(self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
        try:
            while True:
                sent = time.monotonic()
                budget = self.retry_period if not self._leading else max(0.01, self._valid_until - sent)
                held: bool | None
                try:
                    async with asyncio.timeout(budget):  # not wait_for: it can swallow a cancellation (3.11)
                        held = await self._try()
                except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                    held = None  # unknown: a leader keeps leading until its deadline
                    log.warning("leader election: the lease could not be read or renewed: %s", exc or "timed out")
                    await self._drop_connection()
                if held:
                    self._valid_until = sent + self.renew_deadline
                    if not self._leading:
                        self._leading = True
                        self._changed(True)
                        log.info("%s leads now (lease transition %d)", self.identity, self.term)
                        await start()
                elif self._leading and (held is False or time.monotonic() >= self._valid_until):
                    why = "another controller holds the lease" if held is False else "the lease was not renewed in time"
                    log.warning("%s stops leading: %s", self.identity, why)
                    self._leading = False
                    self._valid_until = 0.0
                    self._changed(False)
                    await stop()
                pause = self.retry_period - (time.monotonic() - sent)
                if self._leading:  # wake up to stop on time, should the renewals keep failing
                    pause = min(pause, self._valid_until - time.monotonic())
                await asyncio.sleep(max(0.0, pause))
        finally:
            if self._leading:
                self._leading = False
                self._changed(False)
                await stop()

    def _changed(self, leading: bool) -> None:
        self.transitions += 1
        self.on_change(leading)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1)

    async def release(self) -> None:
        """Hand the lease over now (called once the controller has stopped)."""
        try:
            conn = await asyncio.wait_for(self._connection(), 2)
            await asyncio.wait_for(
                conn.execute(
                    "UPDATE parallax_leases SET holder = NULL, address = NULL WHERE name = $1 AND holder = $2",
                    LEASE_NAME,
                    self.identity,
                ),
                2,
            )
        except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("could not release the lease (it expires by itself): %s", exc)
        finally:
            self._leading = False
            await self._drop_connection()
