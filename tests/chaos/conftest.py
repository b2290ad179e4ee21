from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from tests.harness import TEST_IMAGE_PREFIX, cleanup_instance, make_settings
from tests.server_process import Server, free_port


@pytest.fixture
async def server_env(tmp_path: Path, docker: aiodocker.Docker) -> AsyncIterator[dict[str, str]]:
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
    yield env
    for proc in _children(env["PORT"]):
        proc.kill()
    await cleanup_instance(docker, settings)


def _children(port: str) -> list[subprocess.Popen[bytes]]:
    return [s.proc for s in Server.started if s.env.get("PORT") == port and s.proc and s.proc.poll() is None]
