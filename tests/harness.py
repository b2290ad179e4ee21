"""Test harness: a controller + API on a random port with its own store, network and instance label,
and helpers to look at the real Docker daemon. Nothing here mocks Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiohttp import web

from api.server.app import make_app
from controller.config import Settings

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGE_PREFIX = "parallax-test/agent-"
TEST_IMAGE = "parallax/agent-testing:latest"
AGENT_TYPES = ("claude", "codex", "gemini", "aider", "base")


def ensure_test_images() -> None:
    """Build images/testing and tag it for every agent type, unless that is already done."""
    missing = [
        t
        for t in AGENT_TYPES
        if subprocess.run(
            ["docker", "image", "inspect", f"{TEST_IMAGE_PREFIX}{t}:latest"], capture_output=True
        ).returncode
        != 0
    ]
    if not missing:
        return
    context = REPO / "images" / "testing"
    busybox = context / "busybox"
    if not busybox.exists():
        shutil.copy("/bin/busybox", busybox)
    subprocess.run(["docker", "build", "-q", "-t", TEST_IMAGE, str(context)], check=True, capture_output=True)
    for t in AGENT_TYPES:
        subprocess.run(["docker", "tag", TEST_IMAGE, f"{TEST_IMAGE_PREFIX}{t}:latest"], check=True)


STALE_AFTER_SECONDS = 1800


def remove_stale_test_objects() -> None:
    """Containers, networks and volumes left by an earlier, interrupted test run (test instances only).

    Objects of test runs going on right now (another pytest session on the same daemon) are left alone:
    only stopped containers and objects older than half an hour count as stale.
    """
    templates = {
        "container": '{{index .Config.Labels "parallax.instance"}} {{.State.Running}} {{.Created}}',
        "network": '{{index .Labels "parallax.instance"}} false {{.Created}}',
        "volume": '{{index .Labels "parallax.instance"}} false {{.CreatedAt}}',
    }
    now = time.time()
    for kind, template in templates.items():
        listing = ["docker", kind, "ls", "-q", "--filter", "label=parallax.managed=true"]
        if kind == "container":
            listing.insert(3, "-a")
        ids = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
        for object_id in ids:
            described = subprocess.run(
                ["docker", kind, "inspect", "-f", template, object_id], capture_output=True, text=True
            ).stdout.split(maxsplit=2)
            if len(described) < 3 or not described[0].startswith("test-"):
                continue
            age = now - _docker_epoch(described[2])
            if (kind == "container" and described[1] == "false") or age > STALE_AFTER_SECONDS:
                remove = ["docker", kind, "rm", *(["-f"] if kind == "container" else []), object_id]
                subprocess.run(remove, capture_output=True)


def _docker_epoch(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp[:19]).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "port": 0,
        "store_path": str(tmp_path / "store" / "agents.db"),
        "network": f"pxtest-{tag}",
        "image_prefix": TEST_IMAGE_PREFIX,
        "instance": f"test-{tag}",
        "resync_seconds": 2.0,
        "default_memory": "64m",
        "default_cpu": 0.5,
        # The seed's "/host/data:/data:ro" example must work as written (README: Security).
        "allowed_volume_roots": ("/host",),
    }
    values.update(overrides)
    return Settings(**values)


class Controller:
    """One controller+API process-in-the-test, reachable over real HTTP on 127.0.0.1."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.base_url = ""

    async def start(self) -> None:
        self.runner = web.AppRunner(
            make_app(self.settings),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.settings.idle_timeout_seconds,  # as `parallax serve` does
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        # A response that stops coming fails its test in two minutes, not after aiohttp's default five.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        assert self.session is not None
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.session.request(method, self.base_url + path, data=data, headers=headers, **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except json.JSONDecodeError:
                return resp.status, text

    async def agent(self, name: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", f"/agents/{name}")
        return body if status == 200 else None

    async def wait_agent(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = await self.agent(name)
            if last is not None and predicate(last):
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"agent {name} did not reach the expected state in {timeout}s; last: {last}")

    async def wait_gone(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.agent(name) is None:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"agent {name} still exists after {timeout}s")


def running(agent: dict[str, Any]) -> bool:
    return agent["status"].get("phase") == "Running"


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")


async def wait_network_gone(docker: aiodocker.Docker, name: str, what: str, timeout: float = 30) -> None:
    async def gone() -> bool:
        try:
            await docker.networks.get(name)
        except aiodocker.DockerError as exc:
            return exc.status == 404
        return False

    await wait_for(gone, timeout=timeout, what=what)


async def inspect(docker: aiodocker.Docker, name: str) -> dict[str, Any] | None:
    try:
        return await docker.containers.container(name).show()
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise


async def cleanup_instance(docker: aiodocker.Docker, settings: Settings) -> None:
    """Remove whatever a test controller left behind: its containers, networks and workspace volumes."""
    label = f"parallax.instance={settings.instance}"
    for container in await docker.containers.list(all=True, filters=json.dumps({"label": [label]})):
        with contextlib.suppress(aiodocker.DockerError):
            await container.delete(force=True)
    for network in await docker.networks.list(filters={"label": [label]}):
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.networks.get(network["Id"])).delete()
    for volume in (await docker.volumes.list(filters={"label": [label]})).get("Volumes") or []:
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.volumes.get(volume["Name"])).delete()


def docker_socket() -> str:
    return os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")


async def docker_exec(container: str, *argv: str, timeout: float = 20.0) -> tuple[int, str]:
    """``docker exec`` through the real CLI; returns the exit code and combined output."""
    proc = await asyncio.create_subprocess_exec(
        "docker", "exec", container, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")


async def docker_cli(*argv: str, timeout: float = 60.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "docker", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")
