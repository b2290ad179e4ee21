"""``parallax store migrate --from sqlite:///… --to postgresql://…``: copy a SQLite store into an empty
PostgreSQL store: every agent (spec, status, uid, generation and resourceVersion as they are), every
event, every Secret, and the resourceVersion counter, so clients' versions and the controller's view carry over.

The source must not be in use (its lock file is taken for the copy, so no controller writes meanwhile);
the target must hold no agent yet. The copy is one transaction: all of it or nothing. Secret material is
opened with the key file (``PARALLAX_SECRET_KEY_FILE``) and sealed again with it on the way: the
PostgreSQL controllers need that same key file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from controller.config import ConfigError, parse_store_url
from controller.model.agent import SpecDefaults, container_name
from controller.store.cipher import CipherError, SecretCipher
from controller.store.postgres import _ERRORS, PostgresStore, _reason, shown
from controller.store.rules import StoreUnavailable
from controller.store.sealed import open_manifest, open_secret, seal_manifest, seal_secret


@dataclass(frozen=True)
class Copied:
    agents: int
    events: int
    secrets: int
    resource_version: int


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """The SQLite store's lock, held: no controller has the store open while it is copied."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreUnavailable(f"store {path} is in use by a controller: stop it first") from exc
        yield
    finally:
        os.close(fd)


def _read_sqlite(path: str) -> tuple[list[str], list[tuple[object, ...]], int, list[str]]:
    if not os.path.exists(path):
        raise StoreUnavailable(f"--from: {path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            manifests = [row[0] for row in conn.execute("SELECT manifest FROM agents ORDER BY name")]
            events = conn.execute(
                "SELECT agent, uid, type, reason, message, count, first_ts, last_ts, last_epoch, rv, labels "
                "FROM events ORDER BY rv"
            ).fetchall()
            row = conn.execute("SELECT value FROM counters WHERE key = 'resourceVersion'").fetchone()
            has_secrets = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'secrets'").fetchone()
            secrets = [r[0] for r in conn.execute("SELECT body FROM secrets ORDER BY name")] if has_secrets else []
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"--from: {path} is not a Parallax store: {exc}") from exc
    return manifests, events, int(row[0]) if row else 0, secrets


async def migrate_store(source: str, target: str, defaults: SpecDefaults, cipher: SecretCipher) -> Copied:
    """Copy the SQLite store ``source`` into the empty PostgreSQL store ``target`` (both URLs), secret
    material opened and sealed again with ``cipher``."""
    src = parse_store_url(source, "--from")
    dst = parse_store_url(target, "--to")
    if src.scheme != "sqlite":
        raise ConfigError("--from: names a SQLite store (sqlite:///abs/path/agents.db)")
    if dst.scheme != "postgresql":
        raise ConfigError("--to: names a PostgreSQL store (postgresql://user:password@host:port/database)")
    with _locked(src.path):
        manifests, events, rv, secret_bodies = _read_sqlite(src.path)
        try:
            agents = [open_manifest(m, cipher, defaults)[0] for m in manifests]
            secrets = [open_secret(body, cipher)[0] for body in secret_bodies]
        except CipherError as exc:
            raise StoreUnavailable(f"--from: {exc}") from exc
        manifests = [seal_manifest(agent, cipher) for agent in agents]
        store = PostgresStore(dst.dsn, defaults, cipher=cipher)
        await store.open()  # applies the schema's migrations
        try:
            async with store.pool.acquire() as conn, conn.transaction():
                await conn.fetchval("SELECT value FROM parallax_meta WHERE key = 'resourceVersion' FOR UPDATE")
                held = int(await conn.fetchval("SELECT count(*) FROM parallax_agents"))
                if held:
                    raise StoreUnavailable(
                        f"--to: {shown(dst.dsn)} already holds {held} agents; migrate into an empty store"
                    )
                await conn.executemany(
                    "INSERT INTO parallax_agents (name, uid, container_name, rv, manifest) VALUES ($1, $2, $3, $4, $5)",
                    [
                        (a.name, a.metadata.uid, container_name(a.name), a.metadata.resource_version, m)
                        for a, m in zip(agents, manifests, strict=True)
                    ],
                )
                await conn.execute("DELETE FROM parallax_secrets")
                await conn.executemany(
                    "INSERT INTO parallax_secrets (name, body) VALUES ($1, $2)",
                    [(secret.name, seal_secret(secret, cipher)) for secret in secrets],
                )
                await conn.execute("DELETE FROM parallax_events")
                await conn.executemany(
                    "INSERT INTO parallax_events (agent, uid, type, reason, message, count, first_ts, last_ts, "
                    "last_epoch, rv, labels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    events,
                )
                top = max([rv, *(a.metadata.resource_version for a in agents), *(int(str(e[9])) for e in events)])
                # The change table starts after the copy: a watcher from before it re-lists (410).
                await conn.execute("DELETE FROM parallax_changes")
                await conn.execute("UPDATE parallax_meta SET value = $1 WHERE key = 'resourceVersion'", top)
        except _ERRORS as exc:
            raise StoreUnavailable(f"--to: {shown(dst.dsn)}: {_reason(exc)}") from exc
        finally:
            await store.close()
    return Copied(len(agents), len(events), len(secrets), top)
