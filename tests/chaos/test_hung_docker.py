"""Scenario 6: a Docker call that never answers times out, and does not hold up other agents."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.docker_proxy import HangingDockerProxy
from tests.harness import docker_socket, running

pytestmark = [pytest.mark.docker, pytest.mark.chaos]


async def test_hung_docker_call_times_out_without_blocking_others(start_controller, tmp_path: Path):
    proxy = HangingDockerProxy(str(tmp_path / "docker.sock"), docker_socket(), marker=b"chaos-hung")
    await proxy.start()
    try:
        controller = await start_controller(
            docker_socket=str(tmp_path / "docker.sock"), docker_timeout_seconds=2.0, workers=2
        )
        started = time.monotonic()
        status, _ = await controller.request("POST", "/agents", {"name": "chaos-hung", "type": "claude"})
        assert status == 201
        for i in range(4):
            status, _ = await controller.request("POST", "/agents", {"name": f"chaos-fine-{i}", "type": "claude"})
            assert status == 201
        for i in range(4):
            await controller.wait_agent(f"chaos-fine-{i}", running, timeout=30)
        others = time.monotonic() - started
        hung = await controller.wait_agent("chaos-hung", lambda a: a["status"].get("error") is not None, timeout=30)
        assert hung["status"]["error"]["code"] == "SOCKET_ERROR"
        assert "did not answer" in hung["status"]["error"]["message"]
        t0 = time.monotonic()
        status, _ = await controller.request("GET", "/healthz")
        health_ms = (time.monotonic() - t0) * 1000
        assert status == 200
        print(
            f"\nchaos/hung: {proxy.hung} hung calls; 4 other agents running after {others:.1f} s; "
            f"healthz {health_ms:.0f} ms"
        )
        assert proxy.hung >= 1
    finally:
        await proxy.stop()
