"""The 3-node swarm lab of the swarm runtime's tests and benchmark (``scripts/swarm-lab``): three
dockerd in network namespaces of their own on this machine, node 1 the (drained) manager, 2 and 3 workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiodocker

from controller.config import Settings
from tests.harness import AGENT_TYPES, REPO, TEST_IMAGE, TEST_IMAGE_PREFIX

PREFIX, SUBNET, DIR = (os.environ.get("PARALLAX_SWARM_LAB") or "pxsw 192.168.241 /tmp/pxsw-swarm").split()
IMAGES = [TEST_IMAGE, *(f"{TEST_IMAGE_PREFIX}{t}:latest" for t in AGENT_TYPES)]
NODES = (1, 2, 3)


def socket(node: int) -> str:
    return f"{DIR}/n{node}/docker.sock"


def hostname(node: int) -> str:
    return f"{PREFIX}-node{node}"


def node_of(host: str) -> int:
    return int(host.rsplit("node", 1)[1])


def is_up() -> bool:
    return not dead_nodes()


def up() -> subprocess.CompletedProcess[str]:
    """Start (or reuse) the lab, with the test images on every node."""
    return subprocess.run(
        ["bash", str(REPO / "scripts/swarm-lab/up.sh"), PREFIX, SUBNET, DIR, *IMAGES],
        capture_output=True,
        text=True,
        timeout=180,
    )


def dead_nodes() -> list[int]:
    """The nodes whose dockerd does not answer."""
    return [n for n in NODES if cli(n, "info", "--format", "{{.ID}}", timeout=20).returncode != 0]


def log_tail(node: int, lines: int = 40) -> str:
    path = Path(f"{DIR}/n{node}/dockerd.log")
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def revive() -> str:
    """Start again the nodes whose dockerd is gone (a test that kills one restarts it itself; this is for
    a daemon that died on its own). What each dead node's log said last, for the test output."""
    dead = dead_nodes()
    if not dead:
        return ""
    said = "\n".join(f"swarm lab: node {n}'s dockerd was not answering; its log ended:\n{log_tail(n)}" for n in dead)
    result = up()
    if result.returncode != 0:
        raise RuntimeError(f"{said}\nand the lab did not start again:\n{result.stdout}\n{result.stderr}")
    return said


def down() -> None:
    subprocess.run(["bash", str(REPO / "scripts/swarm-lab/down.sh"), PREFIX, DIR], capture_output=True, timeout=120)


def kill_node(node: int) -> None:
    """SIGKILL a node's dockerd (its containers keep running, as when a machine's daemon dies)."""
    pid = int(Path(f"{DIR}/n{node}/docker.pid").read_text())
    os.kill(pid, signal.SIGKILL)


def cli(node: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", f"unix://{socket(node)}", *argv], capture_output=True, text=True, timeout=timeout
    )


def settings_overrides(**extra: Any) -> dict[str, Any]:
    """What a test controller needs to run on the lab: the manager's socket, every node's endpoint."""
    return {
        "runtime": "swarm",
        "docker_socket": socket(1),
        "swarm_nodes": tuple((hostname(n), f"unix://{socket(n)}") for n in NODES),
        "swarm_poll_seconds": 0.2,
        **extra,
    }


def client(node: int) -> aiodocker.Docker:
    return aiodocker.Docker(url=f"unix://{socket(node)}")


async def cleanup(settings: Settings) -> None:
    """Everything a test controller instance left on the lab: services, networks; containers and
    volumes on every node that answers."""
    label = f"parallax.instance={settings.instance}"
    manager = client(1)
    try:
        for service in await manager.services.list(filters={"label": [label]}):
            with contextlib.suppress(aiodocker.DockerError):
                await manager.services.delete(service["ID"])
    finally:
        await manager.close()
    for node in NODES:
        docker = client(node)
        try:
            for container in await docker.containers.list(all=True, filters=json.dumps({"label": [label]})):
                with contextlib.suppress(aiodocker.DockerError):
                    await container.delete(force=True)
            for volume in (await docker.volumes.list(filters={"label": [label]})).get("Volumes") or []:
                with contextlib.suppress(aiodocker.DockerError):
                    await (await docker.volumes.get(volume["Name"])).delete()
        except (aiodocker.DockerError, OSError):
            pass
        finally:
            await docker.close()
    manager = client(1)
    try:
        for network in await manager.networks.list(filters={"label": [label]}):
            with contextlib.suppress(aiodocker.DockerError):
                await (await manager.networks.get(network["Id"])).delete()
    finally:
        await manager.close()
