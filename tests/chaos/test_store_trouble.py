"""Scenario 4: the store's disk fills up. The API says 503 and writes nothing half-way, running agents
keep running, and everything recovers once there is room again."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiodocker
import pytest

from tests.harness import docker_cli, inspect, running, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.chaos]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own, so "disk full" hits only the store under test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> Path:
    junk = path / "junk"
    with contextlib.suppress(OSError), junk.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return junk


async def test_full_disk_gives_503_and_recovers(start_controller, small_disk: Path, docker: aiodocker.Docker):
    controller = await start_controller(store_path=str(small_disk / "store" / "agents.db"))
    status, body = await controller.request("POST", "/agents", {"name": "store-a", "type": "claude"})
    assert status == 201, body
    before = await controller.wait_agent("store-a", running)

    junk = fill(small_disk)
    status, body = await controller.request("POST", "/agents", {"name": "store-b", "type": "claude"})
    assert status == 503, body
    assert body["error"]["code"] == "STORE_UNAVAILABLE"
    assert "full" in body["error"]["message"]
    status, body = await controller.request("PATCH", "/agents/store-a", {"resources": {"memory": "128m"}})
    assert status == 503, body
    status, body = await controller.request("GET", "/readyz")
    assert status == 503 and body["checks"]["store"]["ok"] is False

    # Reads still work and show the last state that was written; the agent keeps running.
    agent = await controller.agent("store-a")
    assert agent is not None and agent["spec"]["resources"]["memory"] == before["spec"]["resources"]["memory"]
    assert await controller.agent("store-b") is None
    code, out = await docker_cli("kill", "parallax-agent-store-a")
    assert code == 0, out

    async def running_again() -> bool:
        info = await inspect(docker, "parallax-agent-store-a")
        return info is not None and info["State"]["Running"]

    await wait_for(running_again, timeout=30, what="the killed agent to run again while the store is full")

    junk.unlink()
    status, body = await controller.request("GET", "/readyz")
    assert status == 200, body
    status, body = await controller.request("POST", "/agents", {"name": "store-b", "type": "claude"})
    assert status == 201, body
    await controller.wait_agent("store-b", running)
    agent = await controller.wait_agent("store-a", lambda a: running(a) and a["status"]["restartCount"] >= 1)
    assert agent["status"]["containerId"] == before["status"]["containerId"]
