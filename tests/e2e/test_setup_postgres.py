"""``scripts/setup-postgres.sh`` for real: the cluster the PostgreSQL tests use is up (setup.sh ran it),
and running it again changes nothing and takes well under a second."""

from __future__ import annotations

import subprocess
import time

import asyncpg

from tests.harness import REPO
from tests.postgres import base_url


async def test_setup_postgres_again_does_nothing_and_is_fast() -> None:
    started = time.monotonic()
    run = subprocess.run(["bash", str(REPO / "scripts" / "setup-postgres.sh")], capture_output=True, text=True)
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("setup-postgres: running on 127.0.0.1:55432"), run.stdout
    assert "initdb" not in run.stdout and "starting" not in run.stdout
    assert took < 1.0, took
    conn = await asyncpg.connect(base_url())
    try:
        assert await conn.fetchval("SELECT current_user") == "parallax"
    finally:
        await conn.close()
