"""Benchmark 5, restart: stop the controller (SIGTERM) with N running agents (default 100) and start it
again: how long until /readyz answers 200 and until every agent has been reconciled, and how many
containers were recreated or restarted (compared by container id, StartedAt and Docker's RestartCount;
the target is zero). Beside it, the same command's start-up with an empty store (second of two, warm).

    .venv/bin/python -m bench.restart [--agents 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiodocker
import aiohttp

from bench.common import Server, machine_note, metrics, new_tag, shut_down


async def snapshot(docker: aiodocker.Docker, instance: str) -> dict[str, tuple[str, str, int]]:
    filters = json.dumps({"label": [f"parallax.instance={instance}"]})
    found = {}
    for container in await docker.containers.list(all=True, filters=filters):
        info = await container.show()
        found[info["Name"]] = (info["Id"], info["State"]["StartedAt"], int(info.get("RestartCount", 0)))
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=100)
    args = parser.parse_args()
    tag = new_tag()
    server = Server(tag)
    empty = Server(new_tag())
    docker = aiodocker.Docker()
    names = [f"pb{tag}-{i}" for i in range(args.agents)]
    print(f"restart: {args.agents} running agents; {machine_note()}")
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            limit = asyncio.Semaphore(16)

            async def post(name: str) -> None:
                url = server.url + "/agents?wait=true&timeout=300"
                async with limit, session.post(url, json={"name": name, "type": "claude"}) as resp:
                    assert (await resp.json())["status"]["phase"] == "Running"

            await asyncio.gather(*(post(name) for name in names))
            before = await snapshot(docker, server.instance)
            assert len(before) == args.agents
            server.stop()
            ready = await server.start()
            t0 = time.perf_counter()
            while True:
                values = await metrics(session, server.url)
                if (
                    values.get("controller_runtime_reconcile_total", 0) >= args.agents
                    and values.get("workqueue_depth", 1) == 0
                    and values.get("controller_runtime_active_workers", 1) == 0
                ):
                    break
                await asyncio.sleep(0.05)
            settled = ready + time.perf_counter() - t0
            after = await snapshot(docker, server.instance)
            changed = sum(1 for name, state in before.items() if after.get(name) != state)
            print(f"ready (/readyz 200) {ready:.2f}s after spawn; every agent reconciled {settled:.2f}s after spawn")
            print(f"containers recreated or restarted: {changed} of {args.agents}")
            server.stop()
            await empty.start()
            empty.stop()
            empty_ready = await empty.start()
            print(
                f"the same start-up with an empty store: ready {empty_ready:.2f}s after spawn "
                f"(ratio {ready / empty_ready:.2f}); {machine_note()}"
            )
    finally:
        empty.stop()
        await shut_down(server, docker, tag)
        empty.remove_files()


if __name__ == "__main__":
    asyncio.run(main())
