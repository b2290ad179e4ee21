"""Benchmark 4, scale and idle cost: N running agents (default 300; ``--agents 300,600,1000`` runs each
size with a fresh controller); the controller's RSS, its CPU while idle over 60 s (periodic resyncs and
the stats sampler included, as in production), and two full passes over every agent, seen from /metrics:

- a periodic resync: from the resync's first enqueue until every agent was reconciled and the queue is
  empty (the agents' observed state comes from the runtime cache);
- a relist: the controller restarted on the same store, from /readyz until every agent was reconciled
  (one container list, then one inspect per container, inside the reconciles).

The raw reference is the same containers listed by a plain client directly (list + inspect each), measured
right after each, in the same run.

    .venv/bin/python -m bench.scale [--agents 300[,600,...]] [--idle 60] [--resync 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiodocker
import aiohttp

from bench.common import Server, agent_body, cpu_seconds, machine_note, metrics, new_tag, profile, rss_bytes, shut_down

LIST_KEY = 'parallax_docker_api_seconds_count{operation="list_agent_names"}'
LIST_SUM = 'parallax_docker_api_seconds_sum{operation="list_agent_names"}'


async def create_all(session: aiohttp.ClientSession, server: Server, names: list[str]) -> float:
    started = time.perf_counter()
    limit = asyncio.Semaphore(16)

    async def post(name: str) -> None:
        async with limit, session.post(server.url + "/agents", json=agent_body(name)) as resp:
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


async def measure_relist(session: aiohttp.ClientSession, server: Server, n: int, timeout: float) -> float:
    """Restart the controller on the same store; seconds from ready until all ``n`` agents were reconciled."""
    server.stop()
    await server.start()
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        current = await metrics(session, server.url)
        if (
            current.get("controller_runtime_reconcile_total", 0) >= n
            and current.get("workqueue_depth", 1) == 0
            and current.get("controller_runtime_active_workers", 1) == 0
        ):
            return time.perf_counter() - started
        await asyncio.sleep(0.05)
    raise RuntimeError("the restarted controller did not reconcile every agent")


async def raw_listing(docker: aiodocker.Docker, instance: str) -> float:
    started = time.perf_counter()
    filters = json.dumps({"label": [f"parallax.instance={instance}"]})
    for container in await docker.containers.list(all=True, filters=filters):
        await container.show()
    return time.perf_counter() - started


async def one_size(args: argparse.Namespace, agents: int) -> dict[str, float]:
    tag = new_tag()
    server = Server(tag, PARALLAX_RESYNC_SECONDS=str(args.resync))
    docker = aiodocker.Docker()
    names = [f"pb{tag}-{i}" for i in range(agents)]
    print(f"scale: {agents} agents, resync every {args.resync:g}s; {machine_note()}")
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            created = await create_all(session, server, names)
            print(f"all {agents} Running after {created:.1f}s ({agents / created:.1f} agents/s)")
            await asyncio.sleep(5)
            spy = profile(server.pid, args.idle, f"{args.profile}/scale-idle-{agents}.txt") if args.profile else None
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            await asyncio.sleep(args.idle)
            if spy is not None:
                spy.wait()
            cpu1, t1 = cpu_seconds(server.pid), time.perf_counter()
            idle = (cpu1 - cpu0) / (t1 - t0) * 100
            rss = rss_bytes(server.pid) / 2**20
            print(f"idle CPU over {t1 - t0:.0f}s: {idle:.1f}% of one core; RSS {rss:.0f} MiB")
            resync = await measure_resync(session, server, agents, args.resync * 2 + 30)
            listing = await raw_listing(docker, server.instance)
            print(
                f"full resync of {agents} agents: {resync:.2f}s; the same container listing by a plain client: "
                f"{listing:.2f}s ({resync / listing:.2f}x)"
            )
            relist = await measure_relist(session, server, agents, 600)
            listing_again = await raw_listing(docker, server.instance)
            print(
                f"relist after a restart, {agents} agents: {relist:.2f}s; plain client list+inspect: "
                f"{listing_again:.2f}s ({relist / listing_again:.2f}x); {machine_note()}"
            )
            return {
                "agents": agents,
                "create_rate": agents / created,
                "idle_cpu": idle,
                "rss": rss,
                "resync": resync,
                "resync_raw": listing,
                "relist": relist,
                "relist_raw": listing_again,
            }
    finally:
        await shut_down(server, docker, tag)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", default="300", help="comma-separated sizes, each with a fresh controller")
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--resync", type=float, default=30.0)
    parser.add_argument("--profile", metavar="DIR", help="record py-spy profiles of the idle window")
    args = parser.parse_args()
    rows = [await one_size(args, int(size)) for size in args.agents.split(",")]
    print(
        "\n| agents | create→Running | idle CPU | RSS | resync (cache) | plain list+inspect | ratio "
        "| relist (restart) | plain list+inspect | ratio |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['agents']:.0f} | {r['create_rate']:.1f}/s | {r['idle_cpu']:.1f} % | {r['rss']:.0f} MiB "
            f"| {r['resync']:.2f} s | {r['resync_raw']:.2f} s | {r['resync'] / r['resync_raw']:.2f}x "
            f"| {r['relist']:.2f} s | {r['relist_raw']:.2f} s | {r['relist'] / r['relist_raw']:.2f}x |"
        )


if __name__ == "__main__":
    asyncio.run(main())
