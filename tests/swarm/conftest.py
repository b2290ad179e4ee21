from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Controller, ensure_test_images, make_settings
from tests.swarm import lab

StartSwarmController = Any


@pytest.fixture(scope="session")
def swarm_lab(docker_daemon: None) -> Iterator[None]:
    """The 3-node lab swarm, started (or reused) for the session. It not starting fails the tests, never
    skips them. A lab this session started is torn down at its end (namespaces, veths, daemons, state),
    failed tests or not, unless PARALLAX_SWARM_LAB_KEEP=1."""
    was_up = lab.is_up()
    ensure_test_images()
    result = lab.up()
    if result.returncode != 0:
        lab.down()
        pytest.fail(f"the swarm lab did not start:\n{result.stdout}\n{result.stderr}", pytrace=False)
    yield
    if not was_up and os.environ.get("PARALLAX_SWARM_LAB_KEEP") != "1":
        lab.down()


@pytest.fixture
async def start_swarm_controller(swarm_lab: None, tmp_path: Path) -> AsyncIterator[Any]:
    """Starts controllers on the lab swarm (same settings by default, so a restart reuses the store and
    the instance label); removes what they made afterwards."""
    revived = lab.revive()
    if revived:  # shown in the run's output, whatever the test's outcome
        print(revived, file=sys.__stderr__, flush=True)
    started: list[Controller] = []
    base = make_settings(tmp_path, **lab.settings_overrides())

    async def start(**overrides: Any) -> Controller:
        settings = base if not overrides else make_settings(tmp_path, **{**base.__dict__, **overrides})
        controller = Controller(settings)
        await controller.start()
        started.append(controller)
        return controller

    yield start
    for controller in started:
        await controller.stop()
    for settings in {c.settings.instance: c.settings for c in started}.values():
        await lab.cleanup(settings)
