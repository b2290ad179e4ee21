"""Shared by the benchmarks: a `parallax serve` process of their own, raw Docker helpers, statistics.

The benchmarks use only what any operator has: the `parallax` command, its HTTP API and /metrics, and the
Docker Engine API (aiohttp + aiodocker). They import nothing from parallax itself. Every object they make
carries a unique tag (controller instance label, network, container names) and is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.volumes import DockerVolume

PARALLAX = os.environ.get("PARALLAX_BIN") or str(Path(sys.executable).parent / "parallax")
IMAGE_PREFIX = os.environ.get("BENCH_IMAGE_PREFIX", "parallax-test/agent-")
TICK_SECONDS = os.environ.get("BENCH_TICK_SECONDS")
"""The test agents print a tick (and fork a ``sleep``) every 5 s; ``BENCH_TICK_SECONDS=3600`` makes them idle,
as a waiting coding agent is (1000 ticking agents are 200 forks and log lines a second for Docker)."""


def agent_body(name: str) -> dict[str, Any]:
    """The POST body of a benchmark's agent (its raw twin copies the container's env, the tick included)."""
    body: dict[str, Any] = {"name": name, "type": "claude"}
    if TICK_SECONDS:
        body["env"] = {"TICK_SECONDS": TICK_SECONDS}
    return body


RAW_LABEL = "parallax-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def new_tag() -> str:
    return uuid.uuid4().hex[:6]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def profile(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    """py-spy (install it ad hoc: pip install py-spy) sampling ``pid`` without pausing it, as collapsed stacks."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "--nonblocking", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", out]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def machine_note() -> str:
    return f"{os.cpu_count()} cores, load average {loadavg()} (other developers share this machine)"


class Server:
    """`parallax serve` in a subprocess with its own store, port, network and instance label."""

    def __init__(self, tag: str, **env: str) -> None:
        self.tag = tag
        self.instance = f"bench-{tag}"
        self.network = f"pxbench-{tag}"
        self.dir = tempfile.mkdtemp(prefix=f"parallax-bench-{tag}-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "PARALLAX_STORE": f"{self.dir}/agents.db",
            "PARALLAX_INSTANCE": self.instance,
            "DOCKER_NETWORK": self.network,
            "PARALLAX_IMAGE_PREFIX": IMAGE_PREFIX,
            "DEFAULT_MEMORY": "64m",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashed = False
        self.log = open(f"{self.dir}/serve.log", "ab")  # noqa: SIM115

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 30.0) -> float:
        """Start and wait for /readyz; returns the seconds from spawn to ready."""
        started = time.perf_counter()
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (spawning does not block)
            [PARALLAX, "serve", "--log-level", "WARNING"], env=self.env, stdout=self.log, stderr=self.log
        )
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() - started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"parallax serve exited; see {self.dir}/serve.log")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return time.perf_counter() - started
                await asyncio.sleep(0.02)
        raise RuntimeError(f"parallax serve not ready after {timeout}s; see {self.dir}/serve.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.crashed = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove_files(self) -> None:
        """Delete the store and log; a server that died by itself first has its log's tail printed."""
        self.log.close()
        if self.crashed:
            with open(f"{self.dir}/serve.log", errors="replace") as f:
                print(
                    "parallax serve died on its own; its log ends with:\n" + "".join(f.readlines()[-40:]),
                    file=sys.stderr,
                )
        shutil.rmtree(self.dir, ignore_errors=True)


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """/metrics as {'name{label="v",...}': value}, summed by name too (key without braces)."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, raw = line.rpartition(" ")
        value = float(raw)
        values[key] = value
        name = key.split("{", 1)[0]
        if "{" in key:
            values[name] = values.get(name, 0.0) + value
    return values


async def cleanup(docker: aiodocker.Docker, tag: str) -> None:
    """Remove every container, network and volume of this run: the controller's (by instance) and the raw ones."""
    for label in (f"parallax.instance=bench-{tag}", f"{RAW_LABEL}={tag}"):
        for container in await docker.containers.list(all=True, filters=json.dumps({"label": [label]})):
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True)
        for network in await docker.networks.list(filters={"label": [label]}):
            for _ in range(5):  # endpoints of just-removed containers can linger for a moment
                try:
                    await (await docker.networks.get(network["Id"])).delete()
                    break
                except aiodocker.DockerError:
                    await asyncio.sleep(0.5)
    listed = await docker.volumes.list()
    for volume in listed.get("Volumes") or []:
        labels = volume.get("Labels") or {}
        name = volume["Name"]
        ours = name.startswith((f"pxraw-{tag}-", f"parallax-workspace-pb{tag}"))
        if ours or labels.get("parallax.instance") == f"bench-{tag}":
            with contextlib.suppress(aiodocker.DockerError):
                await DockerVolume(docker, name).delete()


STALE_RAW_SECONDS = 3600


async def sweep_stale_raw_networks(docker: aiodocker.Docker) -> None:
    """Remove ``pxraw-*`` networks of earlier, interrupted runs: labelled ``parallax-bench`` and over an hour
    old (a run going on now may have made its network and not yet its containers); Docker refuses to remove
    one still in use. They carry no test label, so the test suite's sweep never sees them, and each holds
    one of Docker's ~31 bridge address pools."""
    now = time.time()
    for network in await docker.networks.list(filters={"label": [RAW_LABEL]}):
        name = str(network.get("Name", ""))
        created = str(network.get("Created", ""))
        if not name.startswith("pxraw-"):
            continue
        with contextlib.suppress(ValueError):
            stamp = datetime.datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00").timestamp()
            if now - stamp > STALE_RAW_SECONDS:
                with contextlib.suppress(aiodocker.DockerError):
                    await (await docker.networks.get(str(network["Id"]))).delete()


async def shut_down(server: Server, docker: aiodocker.Docker, tag: str) -> None:
    """Every benchmark's last step: stop its server, remove what it made (and stale raw networks), close the client."""
    server.stop()
    await cleanup(docker, tag)
    await sweep_stale_raw_networks(docker)
    await docker.close()
    server.remove_files()


def raw_config(inspected: dict[str, Any], tag: str, name: str, network: str) -> dict[str, Any]:
    """A create body for a plain container identical to an inspected one, without parallax's labels."""
    config = inspected["Config"]
    return {
        "Image": config["Image"],
        "Entrypoint": config.get("Entrypoint"),
        "Cmd": config.get("Cmd"),
        "Env": config.get("Env"),
        "User": config.get("User", ""),
        "WorkingDir": config.get("WorkingDir", ""),
        "OpenStdin": config.get("OpenStdin", False),
        "StopSignal": config.get("StopSignal"),
        "Labels": {RAW_LABEL: tag},
        "HostConfig": with_own_volumes(inspected["HostConfig"], tag, name),
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [name]}}},
    }


def with_own_volumes(host_config: dict[str, Any], tag: str, name: str) -> dict[str, Any]:
    """The host config with each named volume replaced by one of this container's own (as parallax gives
    every agent its own workspace volume); Docker creates it at container creation."""
    mounts = [
        {**mount, "Source": f"pxraw-{tag}-{name}-{i}"} if mount.get("Type") == "volume" else mount
        for i, mount in enumerate(host_config.get("Mounts") or [])
    ]
    return {**host_config, "Mounts": mounts}


async def raw_network(docker: aiodocker.Docker, tag: str) -> str:
    name = f"pxraw-{tag}"
    await docker.networks.create({"Name": name, "Driver": "bridge", "Labels": {RAW_LABEL: tag}})
    return name


class ContainerEvents:
    """One Docker event stream; ``wait(id, action)`` resolves when that container reports ``action``."""

    def __init__(self, docker: aiodocker.Docker) -> None:
        self._docker = docker
        self._waiters: dict[tuple[str, str], asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    def expect(self, container_id: str, action: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[(container_id, action)] = future
        return future

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ContainerEvents]:
        subscriber = self._docker.events.subscribe()
        self._task = asyncio.create_task(self._pump(subscriber))
        await asyncio.sleep(0.2)
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            await self._docker.events.stop()

    async def _pump(self, subscriber: Any) -> None:
        while True:
            event = await subscriber.get()
            if event is None:
                return
            if event.get("Type") != "container":
                continue
            key = (event.get("id") or event.get("Actor", {}).get("ID"), str(event.get("Action", "")).split(":")[0])
            future = self._waiters.pop(key, None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())
