"""Benchmark 6, the swarm runtime, on the 3-node lab swarm (scripts/swarm-lab; root, it starts the lab
when it is not up and leaves it as it found it):

1. N agents (default 30) applied through `parallax serve` (PARALLAX_RUNTIME=swarm) until the API says all
   are Running, against aiodocker ``services.create`` of the same N services (the service spec copied
   from parallax's own) at the same concurrency, until all their tasks run; rounds alternate which side
   goes first.
2. Node failure: one agent and one bare service (Swarm restarting it: restart condition any) on the
   same worker, whose dockerd is SIGKILLed: seconds until the API says the agent is Running on the other
   worker, against seconds until Swarm runs the bare service's task there, in the same run. The node is
   brought back afterwards.

    .venv/bin/python -m bench.swarm [--agents 30] [--rounds 2] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from bench.common import IMAGE_PREFIX, RAW_LABEL, Server, machine_note, median, new_tag
from controller.model.timestamps import parse_runtime_time

REPO = Path(__file__).resolve().parent.parent
PREFIX, SUBNET, DIR = (os.environ.get("PARALLAX_SWARM_LAB") or "pxsw 192.168.241 /tmp/pxsw-swarm").split()
IMAGES = ["parallax/agent-testing:latest", *(f"{IMAGE_PREFIX}{t}:latest" for t in ("claude", "base"))]


def sock(node: int) -> str:
    return f"{DIR}/n{node}/docker.sock"


def lab_up() -> None:
    subprocess.run(["bash", str(REPO / "scripts/swarm-lab/up.sh"), PREFIX, SUBNET, DIR, *IMAGES], check=True)


def availability(node: int, value: str) -> None:
    command = ["docker", "-H", f"unix://{sock(1)}", "node", "update", "--availability", value, f"{PREFIX}-node{node}"]
    subprocess.run(command, check=True, capture_output=True)


def lab_down() -> None:
    subprocess.run(["bash", str(REPO / "scripts/swarm-lab/down.sh"), PREFIX, DIR], check=False)


def lab_is_up() -> bool:
    return all(
        subprocess.run(["docker", "-H", f"unix://{sock(n)}", "info"], capture_output=True).returncode == 0
        for n in (1, 2, 3)
    )


async def running_tasks(manager: aiodocker.Docker, label: str) -> dict[str, str]:
    """Service ID -> node ID of each running task of the services labelled ``label``."""
    services = {s["ID"] for s in await manager.services.list(filters={"label": [label]})}
    tasks = await manager.tasks.list(filters={"desired-state": ["running"]})
    return {
        t["ServiceID"]: t["NodeID"] for t in tasks if t["ServiceID"] in services and t["Status"]["State"] == "running"
    }


async def settle(label: str) -> None:
    """Until no node has a container labelled ``label`` left: the next round starts on a quiet swarm, not
    while this one's tasks are still being torn down on the nodes (which favoured neither side, but made
    single rounds spread from 8 to 12 s)."""
    clients = [aiodocker.Docker(url=f"unix://{sock(n)}") for n in (1, 2, 3)]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = [await client.containers.list(all=True, filters={"label": [label]}) for client in clients]
            if not any(left):
                return
            await asyncio.sleep(0.2)
    finally:
        for client in clients:
            await client.close()


async def timeline(manager: aiodocker.Docker, names: set[str], began: float) -> tuple[float, float]:
    """Seconds from ``began`` (wall clock) until the last of the named services was created, and until the
    last of their tasks was running, by the manager's own timestamps: what the side waited for Swarm."""
    services = [s for s in await manager.services.list() if s["Spec"]["Name"] in names]
    ids = {s["ID"] for s in services}
    tasks = [t for t in await manager.tasks.list() if t["ServiceID"] in ids and t["Status"]["State"] == "running"]

    def last(stamps: list[str]) -> float:
        parsed = [parse_runtime_time(stamp) for stamp in stamps]
        return max(p.timestamp() for p in parsed if p is not None) - began

    return last([s["CreatedAt"] for s in services]), last([t["Status"]["Timestamp"] for t in tasks])


class Round:
    """One side's round: until all Running, and when Swarm had made and run the last of them."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self.created = 0.0
        self.ran = 0.0

    def __str__(self) -> str:
        return f"{self.elapsed:.2f} (created {self.created:.2f}, ran {self.ran:.2f})"


async def parallax_round(
    session: aiohttp.ClientSession, server: Server, manager: aiodocker.Docker, names: list[str], workers: int
) -> Round:
    limit = asyncio.Semaphore(workers * 4)
    result = Round()

    async def post(name: str) -> None:
        async with limit, session.post(server.url + "/agents", json={"name": name, "type": "claude"}) as resp:
            assert resp.status == 201, await resp.text()

    began, started = time.time(), time.perf_counter()
    await asyncio.gather(*(post(name) for name in names))
    while True:
        async with session.get(server.url + "/agents?phase=Running") as resp:
            found = {a["metadata"]["name"] for a in (await resp.json())["items"]}
        if set(names) <= found:
            result.elapsed = time.perf_counter() - started
            break
        await asyncio.sleep(0.05)
    result.created, result.ran = await timeline(manager, {f"parallax-agent-{name}" for name in names}, began)
    for name in names:
        async with session.delete(server.url + f"/agents/{name}") as resp:
            await resp.read()
    while True:
        async with session.get(server.url + "/agents") as resp:
            if not set(names) & {a["metadata"]["name"] for a in (await resp.json())["items"]}:
                await settle(f"parallax.instance={server.instance}")
                return result
        await asyncio.sleep(0.2)


def raw_spec(inspected: dict[str, Any], tag: str, name: str) -> dict[str, Any]:
    spec = copy.deepcopy(inspected["Spec"])
    spec["Name"] = name
    spec["Labels"] = {RAW_LABEL: tag}
    spec["TaskTemplate"]["ContainerSpec"]["Labels"] = {RAW_LABEL: tag}
    spec["TaskTemplate"]["Networks"][0]["Aliases"] = [name]
    for mount in spec["TaskTemplate"]["ContainerSpec"]["Mounts"]:
        if mount["Type"] == "volume":
            mount["Source"] = f"pxraw-{tag}-{name}"
            mount.get("VolumeOptions", {}).pop("Labels", None)
    return spec


async def raw_round(manager: aiodocker.Docker, spec: dict[str, Any], names: list[str], tag: str, workers: int) -> Round:
    limit = asyncio.Semaphore(workers)
    result = Round()

    async def create(name: str) -> None:
        body = raw_spec(spec, tag, name)
        async with limit:
            await manager.services.create(
                body["TaskTemplate"],
                name=name,
                labels=body["Labels"],
                mode=body["Mode"],
                update_config=body.get("UpdateConfig"),
                endpoint_spec=body["EndpointSpec"],
            )

    began, started = time.time(), time.perf_counter()
    await asyncio.gather(*(create(name) for name in names))
    while True:
        if len(await running_tasks(manager, f"{RAW_LABEL}={tag}")) == len(names):
            break
        await asyncio.sleep(0.05)
    result.elapsed = time.perf_counter() - started
    result.created, result.ran = await timeline(manager, set(names), began)
    for service in await manager.services.list(filters={"label": [f"{RAW_LABEL}={tag}"]}):
        await manager.services.delete(service["ID"])
    await settle(f"{RAW_LABEL}={tag}")
    return result


async def node_failure(
    session: aiohttp.ClientSession, server: Server, manager: aiodocker.Docker, spec: dict[str, Any], tag: str
) -> tuple[float, float, str]:
    """Both on worker 2 (worker 3 drained while they are placed), then worker 2's dockerd killed."""
    await asyncio.to_thread(availability, 3, "drain")
    try:
        body = raw_spec(spec, f"{tag}nf", f"pbrawnf{tag}")
        body["TaskTemplate"]["RestartPolicy"] = {"Condition": "any", "Delay": 0}
        await manager.services.create(
            body["TaskTemplate"], name=body["Name"], labels=body["Labels"], mode=body["Mode"],
            endpoint_spec=body["EndpointSpec"],
        )  # fmt: skip
        name = f"pbnf{tag}"
        async with session.post(server.url + "/agents?wait=true", json={"name": name, "type": "claude"}) as resp:
            agent = await resp.json()
            assert resp.status == 201 and agent["status"]["phase"] == "Running", agent
        while True:
            if await running_tasks(manager, f"{RAW_LABEL}={tag}nf"):
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(availability, 3, "active")
    victim = agent["status"]["node"]
    assert victim == f"{PREFIX}-node2", victim
    killed = time.perf_counter()
    os.kill(int(Path(f"{DIR}/n2/docker.pid").read_text()), signal.SIGKILL)

    async def ours() -> float:
        while True:
            async with session.get(server.url + f"/agents/{name}") as resp:
                status = (await resp.json())["status"]
            if status.get("phase") == "Running" and status.get("node") != victim:
                return time.perf_counter() - killed
            await asyncio.sleep(0.05)

    nodes = {n["ID"]: n["Description"]["Hostname"] for n in await manager.nodes.list()}

    async def swarms() -> float:
        while True:
            found = await running_tasks(manager, f"{RAW_LABEL}={tag}nf")
            if any(nodes.get(node) != victim for node in found.values()):
                return time.perf_counter() - killed
            await asyncio.sleep(0.05)

    try:
        mine, theirs = await asyncio.wait_for(asyncio.gather(ours(), swarms()), 60)
    finally:
        await asyncio.to_thread(lab_up)
        for service in await manager.services.list(filters={"label": [f"{RAW_LABEL}={tag}nf"]}):
            await manager.services.delete(service["ID"])
        async with session.delete(server.url + f"/agents/{name}") as resp:
            await resp.read()
    return mine, theirs, victim


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    was_up = lab_is_up()
    await asyncio.to_thread(lab_up)
    tag = new_tag()
    nodes = ",".join(f"{PREFIX}-node{n}=unix://{sock(n)}" for n in (1, 2, 3))
    server = Server(
        tag,
        PARALLAX_RUNTIME="swarm",
        DOCKER_SOCKET=sock(1),
        PARALLAX_SWARM_NODES=nodes,
        PARALLAX_WORKERS=str(args.workers),
        DEFAULT_CPU="0.1",
    )
    manager = aiodocker.Docker(url=f"unix://{sock(1)}")
    print(
        f"swarm: parallax (PARALLAX_RUNTIME=swarm, PARALLAX_WORKERS={args.workers}) vs aiodocker services.create "
        f"at concurrency {args.workers}, on a 3-node lab swarm (2 workers); {machine_note()}"
    )
    try:
        await server.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            warm = f"pb{tag}-warm"
            async with session.post(server.url + "/agents?wait=true", json={"name": warm, "type": "claude"}) as resp:
                assert resp.status == 201, await resp.text()
            spec = await manager.services.inspect(f"parallax-agent-{warm}")
            async with session.delete(server.url + f"/agents/{warm}") as resp:
                await resp.read()
            ours, theirs = [], []
            for r in range(args.rounds):
                agents = [f"pb{tag}-{r}-{i}" for i in range(args.agents)]
                raws = [f"pbraw{tag}-{r}-{i}" for i in range(args.agents)]
                if r % 2 == 0:
                    theirs.append(await raw_round(manager, spec, raws, tag, args.workers))
                    ours.append(await parallax_round(session, server, manager, agents, args.workers))
                else:
                    ours.append(await parallax_round(session, server, manager, agents, args.workers))
                    theirs.append(await raw_round(manager, spec, raws, tag, args.workers))
            print(f"{'N':>4} {'parallax s':>11} {'raw s':>8} {'ratio':>6}  (medians of {args.rounds} rounds)")
            ratio = median(r.elapsed for r in ours) / median(r.elapsed for r in theirs)
            print(
                f"{args.agents:>4} {median(r.elapsed for r in ours):>11.2f} {median(r.elapsed for r in theirs):>8.2f} "
                f"{ratio:>6.2f}   {machine_note()}"
            )
            print("rounds (s to all Running; when Swarm had created the last service, and run the last task):")
            print(f"  parallax: {'; '.join(map(str, ours))}")
            print(f"  raw:      {'; '.join(map(str, theirs))}")
            mine, swarm, victim = await node_failure(session, server, manager, spec, tag)
            print(
                f"node failure ({victim}'s dockerd SIGKILLed): the API says Running elsewhere after {mine:.2f} s; "
                f"Swarm ran the bare service elsewhere after {swarm:.2f} s; parallax adds {mine - swarm:+.2f} s"
            )
    finally:
        server.stop()
        for label in (f"parallax.instance=bench-{tag}", f"{RAW_LABEL}={tag}", f"{RAW_LABEL}={tag}nf"):
            for service in await manager.services.list(filters={"label": [label]}):
                await manager.services.delete(service["ID"])
        await asyncio.sleep(2)
        for network in await manager.networks.list(filters={"label": [f"parallax.instance=bench-{tag}"]}):
            try:
                await (await manager.networks.get(network["Id"])).delete()
            except aiodocker.DockerError as exc:
                print(f"network {network['Name']} left: {exc.message}")
        await manager.close()
        server.remove_files()
        if not was_up:
            await asyncio.to_thread(lab_down)


if __name__ == "__main__":
    asyncio.run(main())
