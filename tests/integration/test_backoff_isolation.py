"""A failing agent backs off, and its failures do not make its neighbours busy."""

from __future__ import annotations

import asyncio
import collections
import uuid
from pathlib import Path

import pytest

from api.server.state import CONTROLLER
from controller.reconcile.reconciler import Result
from tests.conftest import StartController
from tests.harness import running

pytestmark = pytest.mark.docker

WINDOW_SECONDS = 12.0


async def test_an_unstartable_agent_does_not_put_its_network_into_a_hot_loop(
    start_controller: StartController, tmp_path: Path
):
    """Docker refuses every start of ``bad`` (a file mounted onto the image's /bin) and emits a network
    disconnect each time. Neither agent may be reconciled more than its triggers allow: the bystander
    at about one resync per period, the failing agent along its exponential backoff."""
    (tmp_path / "a-file").write_text("not a directory\n")
    controller = await start_controller(allowed_volume_roots=(str(tmp_path),), resync_seconds=2.0)
    assert controller.runner is not None
    loop = controller.runner.app[CONTROLLER]
    counts: collections.Counter[str] = collections.Counter()
    reconcile = loop.reconciler.reconcile

    async def counted(name: str) -> Result:
        counts[name] += 1
        return await reconcile(name)

    loop.reconciler.reconcile = counted  # type: ignore[method-assign]
    tag = uuid.uuid4().hex[:6]
    bystander, bad = f"bystander-{tag}", f"unstartable-{tag}"
    status, body = await controller.request(
        "POST", "/agents", {"name": bystander, "type": "claude", "command": ["sleep", "3600"]}
    )
    assert status == 201, body
    await controller.wait_agent(bystander, running)
    status, body = await controller.request(
        "POST", "/agents", {"name": bad, "type": "claude", "volumes": [f"{tmp_path}/a-file:/bin:ro"]}
    )
    assert status == 201, body
    await controller.wait_agent(bad, lambda a: a["status"].get("error", {}).get("code") == "CONTAINER_ERROR")
    _, before = await controller.request("GET", f"/agents/{bystander}/events")
    counts.clear()
    await asyncio.sleep(WINDOW_SECONDS)
    periods = WINDOW_SECONDS / controller.settings.resync_seconds
    # One per resync period, plus the credentials re-checks of its first 12 s (every 3 s); before the fix,
    # every failed start of its neighbour requeued it too: about 40 in 12 s.
    assert counts[bystander] <= periods + 5, dict(counts)
    assert counts[bad] <= 10, dict(counts)  # backoff from 0.05 s doubling: at most ~8 tries in 12 s
    _, after = await controller.request("GET", f"/agents/{bystander}/events")
    assert after["items"] == before["items"], "the bystander got no new events"
    bystander_agent = await controller.agent(bystander)
    assert bystander_agent is not None and running(bystander_agent)
