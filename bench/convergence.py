"""Benchmark 1, convergence: N agents through parallax until all are Running, versus creating and starting
the same N containers (same image and host config, copied from parallax's own) with aiodocker directly,
at the controller's worker count, in the same run.

    .venv/bin/python -m bench.convergence [--sizes 20,50,100] [--rounds 3] [--workers 4]

Rounds alternate which side goes first; the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import aiodocker
import aiohttp

from bench.common import (
    Server,
    agent_body,
    machine_note,
    median,
    new_tag,
    profile,
    raw_config,
    raw_network,
    shut_down,
    with_own_volumes,
)


async def parallax_run(session: aiohttp.ClientSession, server: Server, names: list[str]) -> float:
    async def create(name: str) -> str:
        async with session.post(server.url + "/agents?wait=true&timeout=600", json=agent_body(name)) as resp:
            body = await resp.json()
            assert resp.status == 201, body
            return str(body["status"].get("phase"))

    started = time.perf_counter()
    phases = await asyncio.gather(*(create(name) for name in names))
    elapsed = time.perf_counter() - started
    assert all(phase == "Running" for phase in phases), phases
    return elapsed


async def parallax_delete(session: aiohttp.ClientSession, server: Server, names: list[str]) -> None:
    async def delete(name: str) -> None:
        async with session.delete(server.url + f"/agents/{name}?wait=true&timeout=600") as resp:
            await resp.read()

    await asyncio.gather(*(delete(name) for name in names))


async def raw_run(
    docker: aiodocker.Docker, body: dict, names: list[str], network: str, workers: int, tag: str
) -> float:
    limit = asyncio.Semaphore(workers)

    async def one(name: str) -> None:
        async with limit:
            config = {
                **body,
                "HostConfig": with_own_volumes(body["HostConfig"], tag, name),
                "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [name]}}},
            }
            container = await docker.containers.create(config, name=name)
            await container.start()

    started = time.perf_counter()
    await asyncio.gather(*(one(name) for name in names))
    return time.perf_counter() - started


async def raw_remove(docker: aiodocker.Docker, names: list[str]) -> None:
    limit = asyncio.Semaphore(4)  # 8 concurrent removals of 1000 once wedged Docker 20.10 (a libnetwork lock)

    async def one(name: str) -> None:
        async with limit:
            await docker.containers.container(name).delete(force=True)

    await asyncio.gather(*(one(name) for name in names))


async def raw_side(
    docker: aiodocker.Docker, body: dict, names: list[str], network: str, workers: int, tag: str
) -> float:
    elapsed = await raw_run(docker, body, names, network, workers, tag)
    await raw_remove(docker, names)
    return elapsed


async def parallax_side(session: aiohttp.ClientSession, server: Server, names: list[str]) -> float:
    elapsed = await parallax_run(session, server, names)
    await parallax_delete(session, server, names)
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="20,50,100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--profile", metavar="DIR", help="record a py-spy profile of the server over the whole run")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    tag = new_tag()
    server = Server(tag, PARALLAX_WORKERS=str(args.workers))
    spy = None
    docker = aiodocker.Docker()
    print(
        f"convergence: parallax (PARALLAX_WORKERS={args.workers}) vs aiodocker create+start at concurrency "
        f"{args.workers}; {machine_note()}"
    )
    try:
        await server.start()
        spy = profile(server.pid, 3600, f"{args.profile}/convergence.txt") if args.profile else None
        network = await raw_network(docker, tag)
        # no client timeout: at 1000 agents the last answer comes after aiohttp's default 5 minutes
        no_timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=no_timeout) as session:
            # Warm-up, and the container config to copy for the raw side.
            await parallax_run(session, server, [f"pb{tag}-warm"])
            inspected = await docker.containers.container(f"parallax-agent-pb{tag}-warm").show()
            body = raw_config(inspected, tag, "warm", network)
            await parallax_delete(session, server, [f"pb{tag}-warm"])
            print(f"{'N':>4} {'parallax s':>11} {'raw s':>8} {'ratio':>6}  (medians of {args.rounds} rounds)")
            for n in sizes:
                ratios, ours, theirs = [], [], []
                for r in range(args.rounds):
                    raw_names = [f"pbraw{tag}-{n}-{r}-{i}" for i in range(n)]
                    agent_names = [f"pb{tag}-{n}-{r}-{i}" for i in range(n)]
                    if r % 2 == 0:  # alternate which side goes first, so drifting load favours neither
                        raw_s = await raw_side(docker, body, raw_names, network, args.workers, tag)
                        ours_s = await parallax_side(session, server, agent_names)
                    else:
                        ours_s = await parallax_side(session, server, agent_names)
                        raw_s = await raw_side(docker, body, raw_names, network, args.workers, tag)
                    ours.append(ours_s)
                    theirs.append(raw_s)
                    ratios.append(ours_s / raw_s)
                print(f"{n:>4} {median(ours):>11.2f} {median(theirs):>8.2f} {median(ratios):>6.2f}   {machine_note()}")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        await shut_down(server, docker, tag)


if __name__ == "__main__":
    asyncio.run(main())
