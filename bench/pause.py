"""Benchmark: pause and resume. ``PATCH /agents/{name} {"paused": true}`` until the agent's status says
``Paused`` (the reconciler saw the change, paused the container and wrote the phase), and ``{"paused":
false}`` until it says ``Running`` again; beside it, aiodocker's own ``pause()`` / ``unpause()`` of the
same container in the same run (the controller stopped first, so it does not undo them).

    .venv/bin/python -m bench.pause [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiodocker
import aiohttp

from bench.common import Server, machine_note, median, new_tag, percentile, shut_down

POLL_SECONDS = 0.005


async def until_phase(session: aiohttp.ClientSession, url: str, phase: str) -> None:
    while True:
        async with session.get(url) as resp:
            if (await resp.json())["status"].get("phase") == phase:
                return
        await asyncio.sleep(POLL_SECONDS)


async def toggle(session: aiohttp.ClientSession, url: str, paused: bool) -> float:
    started = time.perf_counter()
    async with session.patch(url, json={"paused": paused}) as resp:
        assert resp.status == 200, await resp.text()
    await until_phase(session, url, "Paused" if paused else "Running")
    return time.perf_counter() - started


def row(label: str, seconds: list[float], reference: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    ratio = median(seconds) / median(reference)
    return f"  {label:<28} p50 {median(ms):7.1f} ms  p90 {percentile(ms, 90):7.1f} ms  ({ratio:.1f}x raw)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    tag = new_tag()
    server = Server(tag)
    docker = aiodocker.Docker()
    name = f"pb{tag}-pause"
    print(f"pause: {args.rounds} rounds on one agent; {machine_note()}")
    try:
        await server.start()
        url = f"{server.url}/agents/{name}"
        async with aiohttp.ClientSession() as session:
            body = {"name": name, "type": "claude", "env": {"TICK_SECONDS": "1"}}
            async with session.post(server.url + "/agents?wait=true&timeout=120", json=body) as resp:
                created = await resp.json()
                assert created["status"]["phase"] == "Running", created
            container_id = created["status"]["containerId"]
            pause, resume = [], []
            for _ in range(args.rounds):
                pause.append(await toggle(session, url, True))
                resume.append(await toggle(session, url, False))
        server.stop()  # the controller would undo a pause it did not ask for
        container = docker.containers.container(container_id)
        raw_pause, raw_resume = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            await container.pause()
            raw_pause.append(time.perf_counter() - started)
            started = time.perf_counter()
            await container.unpause()
            raw_resume.append(time.perf_counter() - started)
        print(row("aiodocker pause()", raw_pause, raw_pause))
        print(row("aiodocker unpause()", raw_resume, raw_resume))
        print(row("spec.paused true -> Paused", pause, raw_pause))
        print(row("spec.paused false -> Running", resume, raw_resume))
    finally:
        await shut_down(server, docker, tag)


if __name__ == "__main__":
    asyncio.run(main())
