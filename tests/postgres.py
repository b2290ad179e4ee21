"""The PostgreSQL the tests use: the private cluster ``scripts/setup-postgres.sh`` starts (its URL in
``PARALLAX_TEST_POSTGRES``). Each test gets a schema of its own (``fresh_url``), so tests never see each
other's rows, notifications or leases. A cluster that is not there fails the tests that need it (never
a skip): run scripts/setup-postgres.sh."""

from __future__ import annotations

import asyncio
import os
import secrets
import urllib.parse

import asyncpg
import pytest

DEFAULT_URL = "postgresql://parallax:parallax@127.0.0.1:55432/parallax"


def base_url() -> str:
    return os.environ.get("PARALLAX_TEST_POSTGRES") or DEFAULT_URL


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``search_path=schema`` (asyncpg passes unknown query parameters as settings)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("search_path", schema)])
    return urllib.parse.urlunsplit(parts._replace(query=query))


async def fresh_url(prefix: str = "pgt") -> str:
    """A URL of a new, empty schema in the test cluster."""
    schema = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        conn = await asyncpg.connect(base_url(), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {base_url().split('@')[-1]} ({exc}); run scripts/setup-postgres.sh",
            pytrace=False,
        )
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return with_schema(base_url(), schema)


async def drop_test_schemas() -> None:
    """Drop the schemas this process made (at the end of the session)."""
    try:
        conn = await asyncpg.connect(base_url(), timeout=5)
    except (OSError, asyncpg.PostgresError):
        return
    try:
        mine = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"%\\_{os.getpid()}\\_%")
        for row in mine:
            await conn.execute(f'DROP SCHEMA "{row[0]}" CASCADE')
    finally:
        await conn.close()


def drop_test_schemas_now() -> None:
    asyncio.run(drop_test_schemas())
