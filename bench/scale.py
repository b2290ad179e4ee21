"""Benchmark 4, scale and idle cost: N running agents (default 300); the controller's RSS, its CPU while
idle over 60 s (periodic resyncs and the stats sampler included, as in production), and the time of a
full resync, seen from /metrics: from the start of the resync's container listing (the listing call's
own duration subtracted from when it is first counted) until every agent was reconciled and the queue
is empty. The raw reference is the same listing done by a client directly (list + inspect each).

    .venv/bin/python -m bench.scale [--agents 300] [--idle 60] [--resync 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiodocker
import aiohttp

from bench.common import Server, cpu_seconds, machine_note, metrics, new_tag, profile, rss_bytes, shut_down

LIST_KEY = 'parallax_docker_api_seconds_count{operation="list_agent_names"}'
LIST_SUM = 'parallax_docker_api_seconds_sum{operation="list_agent_names"}'


async def create_all(session: aiohttp.ClientSession, server: Server, names: list[str]) -> float:
    started = time.perf_counter()
    limit = asyncio.Semaphore(16)

    async def post(name: str) -> None:
        async with limit, session.post(server.url + "/agents", json={"name": name, "type": "claude"}) as resp:
            assert resp.status == 201, await resp.text()

    await asyncio.gather(*(post(name) for name in names))
    while True:
        async with session.get(server.url + "/agents?phase=Running") as resp:
            running = len((await resp.json())["items"])
        if running == len(names):
            return time.perf_counter() - started
        await asyncio.sleep(1.0)


async def measure_resync(session: aiohttp.ClientSession, server: Server, n: int, timeout: float) -> float:
    """Seconds of the next periodic resync, from /metrics polled every 50 ms."""
    previous = await metrics(session, server.url)
    deadline = time.perf_counter() + timeout
    start: float | None = None
    base_reconciles = 0.0
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
        now = time.perf_counter()
        current = await metrics(session, server.url)
        if start is None:
            grew = current.get(LIST_KEY, 0) - previous.get(LIST_KEY, 0)
            added = current.get("workqueue_adds_total", 0) - previous.get("workqueue_adds_total", 0)
            if added >= n / 2:
                listing = current.get(LIST_SUM, 0) - previous.get(LIST_SUM, 0) if grew >= 1 else 0.0
                start = now - 0.05 - min(listing, 5.0)
                base_reconciles = previous.get("controller_runtime_reconcile_total", 0)
        elif (
            current.get("controller_runtime_reconcile_total", 0) - base_reconciles >= n
            and current.get("workqueue_depth", 1) == 0
            and current.get("controller_runtime_active_workers", 1) == 0
        ):
            return now - start
        previous = current
    raise RuntimeError("no full resync seen")


async def raw_listing(docker: aiodocker.Docker, instance: str) -> float:
    started = time.perf_counter()
    filters = json.dumps({"label": [f"parallax.instance={instance}"]})
    for container in await docker.containers.list(all=True, filters=filters):
        await container.show()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--resync", type=float, default=30.0)
    parser.add_argument("--profile", metavar="DIR", help="record py-spy profiles of the idle window and a resync")
    args = parser.parse_args()
    tag = new_tag()
    server = Server(tag, PARALLAX_RESYNC_SECONDS=str(args.resync))
    docker = aiodocker.Docker()
    names = [f"pb{tag}-{i}" for i in range(args.agents)]
    print(f"scale: {args.agents} agents, resync every {args.resync:g}s; {machine_note()}")
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            created = await create_all(session, server, names)
            print(f"all {args.agents} Running after {created:.1f}s")
            await asyncio.sleep(5)
            spy = profile(server.pid, args.idle, f"{args.profile}/scale-idle.txt") if args.profile else None
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            await asyncio.sleep(args.idle)
            if spy is not None:
                spy.wait()
            cpu1, t1 = cpu_seconds(server.pid), time.perf_counter()
            idle = (cpu1 - cpu0) / (t1 - t0) * 100
            rss = rss_bytes(server.pid) / 2**20
            print(f"idle CPU over {t1 - t0:.0f}s: {idle:.1f}% of one core; RSS {rss:.0f} MiB")
            resync = await measure_resync(session, server, args.agents, args.resync * 2 + 30)
            listing = await raw_listing(docker, server.instance)
            print(
                f"full resync of {args.agents} agents: {resync:.2f}s; the same container listing by a plain client: "
                f"{listing:.2f}s ({resync / listing:.1f}x); {machine_note()}"
            )
    finally:
        await shut_down(server, docker, tag)


if __name__ == "__main__":
    asyncio.run(main())
