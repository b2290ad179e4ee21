"""A real ``parallax serve`` process for end-to-end and chaos tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import aiohttp

from controller.config import Settings
from tests.harness import REPO, TEST_IMAGE_PREFIX, make_settings

PARALLAX = str(Path(sys.executable).parent / "parallax")
INSTANCES: list[Settings] = []
"""Every instance ``server_environment`` handed out this session, for the sweep at its end (tests/e2e/conftest.py)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``parallax serve`` in a subprocess; its output goes to a file so a busy server never blocks."""

    started: ClassVar[list[Server]] = []

    def __init__(self, env: dict[str, str], log_path: Path | None = None) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="parallax-serve-")) / "serve.log"

    async def start(self, *, ready: bool = True, timeout: float = 20) -> None:
        """Start and wait for ``/readyz`` (or only ``/healthz`` when Docker is expected to be down)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([PARALLAX, "serve"], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        Server.started.append(self)
        path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.output()
                try:
                    async with session.get(self.url + path) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"server did not answer {path}:\n" + self.output())

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session, session.request(method, self.url + path, json=body) as resp:
            return resp.status, await resp.json()


async def wait_running(server: Server, name: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        status, body = await server.call("GET", f"/agents/{name}")
        if status == 200 and body["status"].get("phase") == "Running":
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not running: {body}")


def server_environment(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Settings]:
    """Environment for a real ``parallax serve`` with its own store, network and instance label."""
    settings = make_settings(tmp_path)
    env = {
        **os.environ,
        "PORT": str(free_port()),
        "PARALLAX_STORE": settings.store_path,
        "DOCKER_NETWORK": settings.network,
        "PARALLAX_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
        "PARALLAX_INSTANCE": settings.instance,
        "DEFAULT_MEMORY": "32m",
        "PARALLAX_RESYNC_SECONDS": "2",
    }
    for name in ("PARALLAX_API_TOKEN", "PARALLAX_SERVER", "PARALLAX_SPECS_DIR"):
        env.pop(name, None)
    env.update(extra)
    INSTANCES.append(settings)
    return env, settings


def remove_instance_networks(instance: str, timeout: float = 15) -> list[str]:
    """Remove the networks labelled with ``instance``; returns those still there after ``timeout``.

    Docker refuses to remove a network while the endpoint of a container removed a moment ago lingers
    ("has active endpoints"), so removal is retried; a single try left networks behind after every run,
    and back-to-back runs then exhausted Docker's address pools.
    """
    listing = ["docker", "network", "ls", "-q", "--filter", f"label=parallax.instance={instance}"]
    deadline = time.monotonic() + timeout
    while True:
        ids = subprocess.run(listing, capture_output=True, text=True).stdout.split()
        if not ids or time.monotonic() > deadline:
            return ids
        for network in ids:
            subprocess.run(["docker", "network", "rm", network], capture_output=True)
        time.sleep(0.5)


def remove_instance(instance: str) -> list[str]:
    """Remove the containers, then the networks, of ``instance``; returns the networks left."""
    listing = ["docker", "ps", "-aq", "--filter", f"label=parallax.instance={instance}"]
    containers = subprocess.run(listing, capture_output=True, text=True).stdout.split()
    if containers:
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True)
    return remove_instance_networks(instance)
