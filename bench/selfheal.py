"""Benchmark 2, self-heal: `docker kill` an agent's container and time until Docker reports it running
again (and until the API says Running with restartCount 1), versus a plain supervisor on raw Docker:
kill, wait for the `die` event, `docker start`, wait for the `start` event. One kill per agent (a second
kill of the same agent would meet the crash-loop backoff, 10 s, by design). ``--agents N`` runs N agents
in all (the killed ones among them), to see whether self-heal slows as the fleet grows.

    .venv/bin/python -m bench.selfheal [--kills 20] [--agents 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiodocker
import aiohttp

from bench.common import (
    ContainerEvents,
    Server,
    agent_body,
    machine_note,
    new_tag,
    percentile,
    raw_config,
    raw_network,
    shut_down,
)
from bench.scale import create_all


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--agents", type=int, default=0, help="agents running in all (default: --kills)")
    args = parser.parse_args()
    tag = new_tag()
    server = Server(tag)
    docker = aiodocker.Docker()
    names = [f"pb{tag}-{i}" for i in range(args.kills)]
    others = [f"pb{tag}-bg{i}" for i in range(max(0, args.agents - args.kills))]
    print(
        f"self-heal: {args.kills} kills among {len(names) + len(others)} agents, parallax vs kill+start on raw "
        f"Docker; {machine_note()}"
    )
    try:
        await server.start()
        network = await raw_network(docker, tag)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def create(name: str) -> str:
                url = server.url + "/agents?wait=true&timeout=120"
                async with session.post(url, json=agent_body(name)) as resp:
                    body = await resp.json()
                    assert body["status"]["phase"] == "Running", body
                    return str(body["status"]["containerId"])

            if others:
                await create_all(session, server, others)
            ids = [await create(name) for name in names]
            template = await docker.containers.container(ids[0]).show()
            raw_ids = []
            for i in range(args.kills):
                raw = await docker.containers.create(
                    raw_config(template, tag, f"raw{i}", network), name=f"pbraw{tag}-{i}"
                )
                await raw.start()
                raw_ids.append(raw.id)
            await asyncio.sleep(1.0)

            async def api_running_again(name: str) -> None:
                while True:
                    async with session.get(server.url + f"/agents/{name}") as resp:
                        status = (await resp.json())["status"]
                    if status.get("phase") == "Running" and status.get("restartCount") == 1:
                        return
                    await asyncio.sleep(0.01)

            ours_docker, ours_api, theirs = [], [], []
            async with ContainerEvents(docker).running() as events:
                for name, container_id, raw_id in zip(names, ids, raw_ids, strict=True):
                    # parallax: kill, the controller notices and starts it again
                    started = events.expect(container_id, "start")
                    t0 = time.perf_counter()
                    await docker.containers.container(container_id).kill()
                    ours_docker.append(await asyncio.wait_for(started, 30) - t0)
                    await asyncio.wait_for(api_running_again(name), 30)
                    ours_api.append(time.perf_counter() - t0)
                    # raw: kill, wait for the die event, start, wait for the start event
                    died = events.expect(raw_id, "die")
                    started = events.expect(raw_id, "start")
                    t0 = time.perf_counter()
                    await docker.containers.container(raw_id).kill()
                    await asyncio.wait_for(died, 30)
                    await docker.containers.container(raw_id).start()
                    theirs.append(await asyncio.wait_for(started, 30) - t0)
            print(f"{'':28} {'p50 s':>7} {'p95 s':>7}")
            for label, values in (
                ("parallax: Docker running", ours_docker),
                ("parallax: API Running", ours_api),
                ("raw kill+start", theirs),
            ):
                print(f"{label:28} {percentile(values, 50):>7.3f} {percentile(values, 95):>7.3f}")
            p50_ratio = percentile(ours_docker, 50) / percentile(theirs, 50)
            print(
                f"ratio p50 (parallax Docker-running / raw): {p50_ratio:.2f} with {len(names) + len(others)} "
                f"agents; {machine_note()}"
            )
    finally:
        await shut_down(server, docker, tag)


if __name__ == "__main__":
    asyncio.run(main())
