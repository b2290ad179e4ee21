"""``parallax serve`` as a real process: SIGTERM leaves agents running; a restart adopts them."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import aiodocker
import pytest

from tests.harness import inspect
from tests.server_process import PARALLAX, Server, free_port, wait_running

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


async def test_restarted_controller_adopts_running_agents_without_restarting_them(
    server_env: dict[str, str], docker: aiodocker.Docker
):
    server = Server(server_env)
    await server.start()
    names = [f"adopt-{uuid.uuid4().hex[:6]}", f"adopt-{uuid.uuid4().hex[:6]}"]
    for name in names:
        status, body = await server.call("POST", "/agents", {"name": name, "type": "claude"})
        assert status == 201, body
    before = {name: await wait_running(server, name) for name in names}
    started = {name: (await inspect(docker, f"parallax-agent-{name}"))["State"]["StartedAt"] for name in names}

    assert server.terminate() == 0, server.output()
    for name in names:
        info = await inspect(docker, f"parallax-agent-{name}")
        assert info is not None and info["State"]["Running"], "stopping the controller must not stop agents"

    second = Server(server_env)
    await second.start()
    try:
        for name in names:
            agent = await wait_running(second, name)
            assert agent["status"]["containerId"] == before[name]["status"]["containerId"]
            assert agent["status"]["restartCount"] == 0
            info = await inspect(docker, f"parallax-agent-{name}")
            assert info is not None and info["State"]["StartedAt"] == started[name]
        await asyncio.sleep(2.5)  # one resync period: still nothing restarted
        for name in names:
            info = await inspect(docker, f"parallax-agent-{name}")
            assert info is not None and info["State"]["StartedAt"] == started[name]

        third = subprocess.run(
            [PARALLAX, "serve"],
            env={**server_env, "PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert third.returncode != 0
        assert "in use by another controller" in third.stderr

        for name in names:
            status, _ = await second.call("DELETE", f"/agents/{name}")
            assert status == 202
    finally:
        assert second.terminate() == 0


async def test_invalid_setting_stops_the_start_with_the_variable_name(server_env: dict[str, str]):
    result = subprocess.run(
        [PARALLAX, "serve"], env={**server_env, "DEFAULT_MEMORY": "lots"}, capture_output=True, text=True, timeout=20
    )
    assert result.returncode != 0
    assert "DEFAULT_MEMORY" in result.stderr
