"""Every acknowledged write is reflected, however many clients write one agent at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from api.server.state import STORE
from tests.harness import Controller

pytestmark = pytest.mark.docker


def unique(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:6]}"


async def test_fifty_parallel_label_patches_all_take_effect(controller: Controller):
    name = unique("c1")
    status, body = await controller.request("POST", "/agents", {"name": name, "type": "claude", "suspend": True})
    assert status == 201, body
    answers = await asyncio.gather(
        *(controller.request("PATCH", f"/agents/{name}", {"metadata": {"labels": {f"k{i}": "v"}}}) for i in range(50))
    )
    assert [status for status, _ in answers] == [200] * 50
    agent = await controller.agent(name)
    assert agent is not None
    assert {f"k{i}" for i in range(50)} <= set(agent["metadata"]["labels"]), agent["metadata"]["labels"]


async def test_a_redacted_value_sent_back_keeps_the_rotated_secret(controller: Controller):
    """A PUT rotating the key, then at once a PUT from a client that read the agent earlier (its value
    reads ``<redacted>``): the rotated key is kept, every time."""
    assert controller.runner is not None
    store = controller.runner.app[STORE]
    name = unique("rotate")
    body = {"name": name, "type": "claude", "suspend": True, "env": {"API_KEY": "sk-original"}}
    status, created = await controller.request("POST", "/agents", body)
    assert status == 201, created
    for attempt in range(20):
        rotated = f"sk-rotated-{attempt}"
        sent_back = {**body, "env": {"API_KEY": "<redacted>"}, "labels": {"try": str(attempt)}}
        first, second = await asyncio.gather(
            controller.request("PUT", f"/agents/{name}", {**body, "env": {"API_KEY": rotated}}),
            controller.request("PUT", f"/agents/{name}", sent_back),
        )
        assert (first[0], second[0]) == (200, 200), (first, second)
        assert (await store.get(name)).spec.env["API_KEY"] == rotated, f"attempt {attempt}: old key restored"


async def test_a_stale_resource_version_is_still_a_conflict(controller: Controller):
    name = unique("cas")
    status, created = await controller.request("POST", "/agents", {"name": name, "type": "claude", "suspend": True})
    assert status == 201
    stale = created["metadata"]["resourceVersion"]
    status, _ = await controller.request("PATCH", f"/agents/{name}", {"metadata": {"labels": {"a": "1"}}})
    assert status == 200
    patch = {"metadata": {"resourceVersion": stale, "labels": {"b": "2"}}}
    status, answer = await controller.request("PATCH", f"/agents/{name}", patch)
    assert status == 409, answer
    agent = await controller.agent(name)
    assert agent is not None and "b" not in agent["metadata"]["labels"]
