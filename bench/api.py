"""Benchmark 3, API: requests per second and latency of `POST /agents` (distinct names, no wait) and
`GET /agents/{name}` with 16 concurrent clients, beside an aiohttp handler returning a constant (its own
process, same machine, same client). The posted agents are `suspend: true`, so the controller reconciles
each one (store read, Docker listing, status write) while the benchmark runs, but starts no container.

    .venv/bin/python -m bench.api [--clients 16] [--posts 2000] [--gets 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import aiodocker
import aiohttp

from bench.common import Server, free_port, machine_note, new_tag, percentile, profile, shut_down

CONSTANT_SERVER = """
import sys
from aiohttp import web
async def constant(request):
    return web.json_response({"status": "ok"})
app = web.Application()
app.router.add_get("/constant", constant)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def load(
    session: aiohttp.ClientSession, clients: int, total: int, request: Callable[[int], tuple[str, str, dict | None]]
) -> tuple[float, list[float]]:
    """``total`` requests from ``clients`` concurrent loops; returns (requests/s, latencies)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def client() -> None:
        for i in counter:
            method, url, body = request(i)
            t0 = time.perf_counter()
            async with session.request(method, url, json=body) as resp:
                await resp.read()
                assert resp.status in (200, 201), (resp.status, await resp.text())
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return total / (time.perf_counter() - started), latencies


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


async def all_reconciled(session: aiohttp.ClientSession, url: str, names: set[str]) -> float:
    """Seconds until every posted agent's status says Suspended (the GETs then run on a quiet controller)."""
    started = time.perf_counter()
    while True:
        async with session.get(url + "/agents") as resp:
            items = (await resp.json())["items"]
        done = sum(1 for a in items if a["metadata"]["name"] in names and a["status"].get("phase") == "Suspended")
        if done == len(names):
            return time.perf_counter() - started
        await asyncio.sleep(0.2)


def row(label: str, rps: float, latencies: list[float]) -> str:
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    return f"{label:34} {rps:>8.0f} {p50:>8.1f} {p99:>8.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--gets", type=int, default=4000)
    parser.add_argument("--profile", metavar="DIR", help="record a py-spy profile of the server during the POSTs")
    args = parser.parse_args()
    tag = new_tag()
    server = Server(tag)
    port = free_port()
    constant = subprocess.Popen([sys.executable, "-c", CONSTANT_SERVER, str(port)])  # noqa: ASYNC220
    docker = aiodocker.Docker()
    print(f"api: {args.clients} concurrent clients; {machine_note()}")
    try:
        await server.start()
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            constant_url = f"http://127.0.0.1:{port}/constant"
            await wait_up(session, constant_url)
            names = [f"pb{tag}-{i}" for i in range(args.posts)]
            print(f"{'':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            base_rps, base_lat = await load(session, args.clients, args.gets, lambda i: ("GET", constant_url, None))
            print(row("constant aiohttp handler (GET)", base_rps, base_lat))
            spy = profile(server.pid, 600, f"{args.profile}/api-post.txt") if args.profile else None
            post_rps, post_lat = await load(
                session,
                args.clients,
                args.posts,
                lambda i: ("POST", server.url + "/agents", {"name": names[i], "type": "claude", "suspend": True}),
            )
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait()
            print(row("parallax POST /agents", post_rps, post_lat))
            settled = await all_reconciled(session, server.url, set(names))
            print(f"  (all {len(names)} reconciled to Suspended {settled:.1f} s after the last POST answered)")
            get_rps, get_lat = await load(
                session,
                args.clients,
                args.gets,
                lambda i: ("GET", server.url + f"/agents/{names[i % len(names)]}", None),
            )
            print(row("parallax GET /agents/{name}", get_rps, get_lat))
            print(
                f"ratios to the constant handler: POST {post_rps / base_rps:.2f}x req/s, "
                f"GET {get_rps / base_rps:.2f}x req/s; {machine_note()}"
            )
    finally:
        constant.terminate()
        constant.wait()
        await shut_down(server, docker, tag)


if __name__ == "__main__":
    asyncio.run(main())
