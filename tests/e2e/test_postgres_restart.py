"""PostgreSQL restarted under a `parallax serve` that is taking writes: meanwhile writes answer 503
(never 500), `/readyz` says the store is unavailable; afterwards writes work again without restarting the
server, and every write that was answered 201 is there (also for a server started afresh)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.postgres import fresh_url
from tests.server_process import Server, server_environment

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

PG_DATA = "/var/lib/parallax-pg"
PG_LOG = "/var/log/parallax-pg.log"


def restart_postgres() -> None:
    bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    # The server's output goes to its log (-l): a pipe of ours would be held open by the server for ever.
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", PG_DATA, "-l", PG_LOG, "-m", "fast", "-w", "-t", "60", "restart"]
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *pg_ctl],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=90,
    )


async def test_writes_answer_503_while_postgres_restarts_and_nothing_acknowledged_is_lost(
    tmp_path: Path, docker_daemon: None
):
    env, _ = server_environment(tmp_path, PARALLAX_STORE=await fresh_url())
    server = Server(env, tmp_path / "serve.log")
    await server.start()
    answers: dict[str, int] = {}
    stop = asyncio.Event()

    async def writer(session: aiohttp.ClientSession, worker: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"pgt-r{worker}-{i}"
            i += 1
            try:
                async with session.post(
                    server.url + "/agents", json={"name": name, "type": "claude", "suspend": True}
                ) as resp:
                    answers[name] = resp.status
                    if resp.status == 503:
                        assert "STORE_UNAVAILABLE" in await resp.text()
            except aiohttp.ClientError:
                answers[name] = -1
            await asyncio.sleep(0.01)

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            writers = [asyncio.ensure_future(writer(session, w)) for w in range(8)]
            await asyncio.sleep(1)
            await asyncio.to_thread(restart_postgres)
            restarted = time.monotonic()
            # Writes work again by themselves (the pool reconnects).
            while True:
                await asyncio.sleep(0.2)
                recent = [status for _, status in list(answers.items())[-8:]]
                if recent and all(status == 201 for status in recent):
                    break
                assert time.monotonic() - restarted < 20, list(answers.items())[-20:]
            stop.set()
            await asyncio.gather(*writers)
            async with session.get(server.url + "/readyz") as resp:
                assert resp.status == 200, await resp.text()
            async with session.get(server.url + "/agents") as resp:
                listed = {a["metadata"]["name"] for a in (await resp.json())["items"]}
        statuses = set(answers.values())
        assert statuses <= {201, 503}, statuses  # never a 500, never a dropped connection
        assert 503 in statuses, "the restart was not seen by any write"
        acknowledged = {name for name, status in answers.items() if status == 201}
        assert acknowledged <= listed
    finally:
        server.terminate()
    again = Server({**env}, tmp_path / "serve-again.log")
    await again.start()
    try:
        _, body = await again.call("GET", "/agents")
        assert acknowledged <= {a["metadata"]["name"] for a in body["items"]}
    finally:
        again.kill()  # only what the database holds matters here
