"""Benchmark 6, the PostgreSQL store and leader election, in one run:

1. `POST /agents` (16 clients, distinct names, suspended agents, as `bench.api`) against a server on
   SQLite and one on PostgreSQL, side by side: req/s, p50, p99.
2. A raw asyncpg loop inserting the same rows (each POST's manifest, 16 concurrent connections, one
   autocommit INSERT each): what PostgreSQL itself takes on this machine; the ratio of (1) to it.
3. Failover: two servers on one PostgreSQL store; the leader is SIGKILLed `--kills` times and the time
   until the other one leads (its `/readyz`) is measured; the killed one is started again as the standby.

    .venv/bin/python -m bench.postgres [--clients 16] [--posts 2000] [--kills 10] [--lease 5 --renew 3 --retry 1]

PostgreSQL: `PARALLAX_TEST_POSTGRES` (default the cluster of scripts/setup-postgres.sh); each run uses a
schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time

import aiodocker
import aiohttp
import asyncpg

from bench.api import load, row, wait_up
from bench.common import Server, cleanup, free_port, machine_note, new_tag, percentile, shut_down

DEFAULT_URL = "postgresql://parallax:parallax@127.0.0.1:55432/parallax"


class _SkipPosts(Exception):
    """``--posts 0``: only the failover part."""


async def fresh_schema(base: str) -> tuple[str, str]:
    schema = f"bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return schema, f"{base}{'&' if '?' in base else '?'}search_path={schema}"


async def drop_schema(base: str, schema: str) -> None:
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def post_run(server: Server, clients: int, posts: int, prefix: str) -> tuple[float, list[float]]:
    await server.start()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        names = [f"{prefix}-{i}" for i in range(posts)]
        return await load(
            session,
            clients,
            posts,
            lambda i: ("POST", server.url + "/agents", {"name": names[i], "type": "claude", "suspend": True}),
        )


async def raw_inserts(url: str, clients: int, total: int, manifest: str) -> tuple[float, list[float]]:
    pool = await asyncpg.create_pool(url, min_size=clients, max_size=clients)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE raw_agents (name TEXT PRIMARY KEY, manifest TEXT NOT NULL)")
        latencies: list[float] = []
        counter = iter(range(total))

        async def client() -> None:
            for i in counter:
                t0 = time.perf_counter()
                await pool.execute("INSERT INTO raw_agents (name, manifest) VALUES ($1, $2)", f"raw-{i}", manifest)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return total / (time.perf_counter() - started), latencies
    finally:
        await pool.close()


async def leading(session: aiohttp.ClientSession, server: Server) -> bool:
    try:
        async with session.get(server.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return bool((await resp.json())["leader"]["leading"])
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        return False


async def failover(url: str, tag: str, kills: int, lease: float, renew: float, retry: float) -> list[float]:
    timing = {
        "PARALLAX_STORE": url,
        "PARALLAX_LEASE_DURATION": str(lease),
        "PARALLAX_RENEW_DEADLINE": str(renew),
        "PARALLAX_RETRY_PERIOD": str(retry),
    }
    servers = [Server(tag, **timing, PARALLAX_IDENTITY=f"bench-{tag}-{i}") for i in range(2)]
    for server in servers:
        server.env["PORT"] = str(server.port)
        await server.start()
    times: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(kills):
                deadline = time.monotonic() + lease + 10
                while not any([await leading(session, s) for s in servers]):
                    assert time.monotonic() < deadline, "nobody leads"
                    await asyncio.sleep(0.05)
                views = [await leading(session, s) for s in servers]
                leader = servers[views.index(True)]
                other = next(s for s in servers if s is not leader)
                assert leader.proc is not None
                leader.proc.kill()
                killed = time.perf_counter()
                leader.proc.wait()
                leader.proc = None
                while not await leading(session, other):  # noqa: ASYNC110 (polling another process)
                    await asyncio.sleep(0.02)
                times.append(time.perf_counter() - killed)
                print(f"  failover {len(times)}: {times[-1]:.2f} s")
                leader.port = free_port()
                leader.url = f"http://127.0.0.1:{leader.port}"
                leader.env["PORT"] = str(leader.port)
                await leader.start()
                await wait_up(session, leader.url + "/healthz")
    finally:
        for server in servers:
            server.stop()
            server.remove_files()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--renew", type=float, default=3.0)
    parser.add_argument("--retry", type=float, default=1.0)
    args = parser.parse_args()
    base = os.environ.get("PARALLAX_TEST_POSTGRES") or DEFAULT_URL
    tag = new_tag()
    docker = aiodocker.Docker()
    schema, url = await fresh_schema(base)
    print(f"postgres: {args.clients} concurrent clients; {machine_note()}")
    sqlite_server = Server(tag)
    pg_server = Server(tag, PARALLAX_STORE=url)
    try:
        try:
            print(f"{'':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            if not args.posts:
                raise _SkipPosts
            try:
                sqlite = await post_run(sqlite_server, args.clients, args.posts, f"pb{tag}-s")
            finally:
                sqlite_server.stop()
            print(row("POST /agents, SQLite store", *sqlite))
            try:
                pg = await post_run(pg_server, args.clients, args.posts, f"pb{tag}-p")
                async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
                    manifest = await pool.fetchval("SELECT manifest FROM parallax_agents LIMIT 1")
            finally:
                pg_server.stop()
            print(row("POST /agents, PostgreSQL store", *pg))
            raw = await raw_inserts(url, args.clients, args.posts, str(manifest))
            print(row("raw asyncpg INSERT, same rows", *raw))
            print(
                f"PostgreSQL store POST / raw INSERT: {pg[0] / raw[0]:.2f}x req/s; "
                f"/ SQLite store: {pg[0] / sqlite[0]:.2f}x"
            )
            await cleanup(docker, tag)
        except _SkipPosts:
            pass
        if args.kills:
            schema2, url2 = await fresh_schema(base)
            try:
                print(f"failover: lease {args.lease} s, renew deadline {args.renew} s, retry {args.retry} s")
                times = await failover(url2, tag, args.kills, args.lease, args.renew, args.retry)
                print(
                    f"failover over {len(times)} leader kills: p50 {percentile(times, 50):.2f} s, "
                    f"max {max(times):.2f} s (bound: lease + retry = {args.lease + args.retry:.1f} s)"
                )
            finally:
                await drop_schema(base, schema2)
        print(json.dumps({"machine": machine_note()}))
    finally:
        await shut_down(pg_server, docker, tag)
        sqlite_server.remove_files()
        await drop_schema(base, schema)


if __name__ == "__main__":
    asyncio.run(main())
