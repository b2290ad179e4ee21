"""The watch-fed runtime cache against a real daemon: a resync with nothing changed asks Docker nothing
about containers; a change behind the controller's back is still seen through the event stream; the
cache's metrics say what it holds and how often it listed."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.conftest import StartController
from tests.harness import docker_cli, running
from tests.integration.test_metrics import scrape, value

pytestmark = pytest.mark.docker

AGENTS = 4


def docker_calls(samples: dict, operation: str) -> float:
    return value(samples, "parallax_docker_api_seconds_count", operation=operation)


async def test_resyncs_read_the_cache_and_the_event_stream_keeps_it_current(start_controller: StartController):
    controller = await start_controller(resync_seconds=1.0)
    tag = uuid.uuid4().hex[:6]
    names = [f"cache-{tag}-{i}" for i in range(AGENTS)]
    for name in names:
        status, body = await controller.request(
            "POST", "/agents", {"name": name, "type": "claude", "command": ["sleep", "3600"]}
        )
        assert status == 201, body
    for name in names:
        await controller.wait_agent(name, running)
    await asyncio.sleep(13)  # past the credentials checks of the agents' first seconds

    _, before = await scrape(controller)
    resyncs_before = value(before, "workqueue_adds_total", controller="agent", name="agent")
    await asyncio.sleep(3.5)  # three resyncs: every agent reconciled three more times
    _, after = await scrape(controller)

    assert value(after, "workqueue_adds_total", controller="agent", name="agent") - resyncs_before >= 2 * AGENTS
    for operation in ("list_containers", "inspect", "list_agent_names", "ensure_network"):
        assert docker_calls(after, operation) == docker_calls(before, operation), operation
    assert value(after, "parallax_runtime_cache_objects") == AGENTS
    assert value(after, "parallax_runtime_cache_relists_total", reason="stream-open") >= 1

    # Behind the controller's back: only the event stream can tell the cache.
    victim = names[0]
    _, agent = await controller.request("GET", f"/agents/{victim}")
    old = agent["status"]["containerId"]
    code, out = await docker_cli("rm", "-f", f"parallax-agent-{victim}")
    assert code == 0, out
    healed = await controller.wait_agent(victim, lambda a: running(a) and a["status"]["containerId"] != old, timeout=30)
    assert healed["status"]["containerId"] != old
    _, later = await scrape(controller)
    assert value(later, "parallax_runtime_cache_objects") == AGENTS
    assert value(later, "parallax_docker_event_lag_seconds_count") > 0
