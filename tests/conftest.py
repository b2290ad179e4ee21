from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from tests.harness import (
    Controller,
    cleanup_instance,
    ensure_test_images,
    make_settings,
    remove_stale_test_objects,
)
from tests.server_process import Server, server_environment


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    """A real Docker daemon: its absence fails the test run (it is never a skip)."""
    result = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(
            "the Docker daemon is not reachable; run scripts/setup.sh (it installs and starts it)\n" + result.stderr,
            pytrace=False,
        )
    ensure_test_images()
    remove_stale_test_objects()


@pytest.fixture
async def docker(docker_daemon: None) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker()
    try:
        yield client
    finally:
        await client.close()


StartController = Callable[..., Coroutine[Any, Any, Controller]]


@pytest.fixture
async def start_controller(docker: aiodocker.Docker, tmp_path: Path) -> AsyncIterator[StartController]:
    """Starts controllers (same settings by default, so a restart reuses the store); cleans up after."""
    started: list[Controller] = []
    base = make_settings(tmp_path)

    async def start(**overrides: Any) -> Controller:
        settings = base if not overrides else make_settings(tmp_path, **{**base.__dict__, **overrides})
        controller = Controller(settings)
        await controller.start()
        started.append(controller)
        return controller

    yield start
    for controller in started:
        await controller.stop()
    seen = set()
    for controller in started:
        if controller.settings.instance not in seen:
            seen.add(controller.settings.instance)
            await cleanup_instance(docker, controller.settings)


@pytest.fixture
async def controller(start_controller: StartController) -> Controller:
    return await start_controller()


@pytest.fixture
async def server_env(tmp_path: Path, docker: aiodocker.Docker) -> AsyncIterator[dict[str, str]]:
    """Environment for a real ``parallax serve``; the server is killed and its objects removed after."""
    env, settings = server_environment(tmp_path)
    yield env
    for proc in _children(env["PORT"]):
        proc.kill()
    await cleanup_instance(docker, settings)


def _children(port: str) -> list[subprocess.Popen[bytes]]:
    return [s.proc for s in Server.started if s.env.get("PORT") == port and s.proc and s.proc.poll() is None]
