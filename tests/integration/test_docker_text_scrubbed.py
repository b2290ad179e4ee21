"""Text that comes back from Docker is scrubbed of the agent's env values before it is stored, logged
or returned.

Admission now refuses an env value with a NUL, so the record is planted in the store directly, as an
older controller admitted it (a store that outlived the upgrade). runc refuses to start the container
and quotes the entry, ``"API_KEY=<value with \\x00>"``; the secret's two halves are then searched for in
every answer (the agent, the list, its events), the ``/events`` and ``?watch=true`` streams, the
WebSocket, and every log line the controller wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

import aiohttp
import pytest

from controller.admission.admit import spec_defaults
from controller.model.agent import Agent, AgentSpec, Metadata
from controller.store.sqlite import SqliteStore
from tests.conftest import StartController
from tests.harness import Controller, make_settings, wait_for

pytestmark = pytest.mark.docker

NAME = "scrub-nul"


async def _stream(session: aiohttp.ClientSession, url: str, sink: list[str]) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            async for chunk in resp.content.iter_any():
                sink.append(chunk.decode(errors="replace"))


async def _websocket(session: aiohttp.ClientSession, url: str, sink: list[str]) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async with session.ws_connect(url) as ws:
            async for message in ws:
                sink.append(str(message.data))


async def test_a_runc_refusal_quoting_an_env_entry_reaches_no_status_event_stream_or_log(
    start_controller: StartController, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    head, tail = f"sk-head-{uuid.uuid4().hex[:12]}", f"tail-{uuid.uuid4().hex[:12]}"
    secret = f"{head}\x00{tail}"
    settings = make_settings(tmp_path)
    store = SqliteStore(settings.store_path, spec_defaults(settings))
    await store.open()
    try:
        spec = AgentSpec.from_dict({"type": "claude", "env": {"API_KEY": secret}}, spec_defaults(settings))
        planted = await store.create(Agent(Metadata(name=NAME), spec))
    finally:
        await store.close()

    controller = await start_controller()
    assert controller.session is not None
    since = f"?resourceVersion={planted.metadata.resource_version}"
    streamed: list[str] = []
    ws = controller.base_url.replace("http", "ws", 1) + "/ws" + since
    base = controller.base_url
    watchers = [
        asyncio.create_task(_stream(controller.session, base + "/events" + since, streamed)),
        asyncio.create_task(_stream(controller.session, base + "/agents?watch=true&" + since[1:], streamed)),
        asyncio.create_task(_websocket(controller.session, ws, streamed)),
    ]
    try:
        agent = await controller.wait_agent(NAME, lambda a: bool(a["status"].get("error")), timeout=60)
        # Let it retry a few times: each failure is another status write, event and log line.
        await wait_for(
            lambda: _failures(controller, NAME), timeout=60, what="the start failing again (an event counted twice)"
        )
        answers = []
        for path in (f"/agents/{NAME}", "/agents", f"/agents/{NAME}/events"):
            status, body = await controller.request("GET", path)
            assert status == 200, (path, body)
            answers.append(str(body))
        await asyncio.sleep(0.5)  # the streams have what was written
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    error = agent["status"]["error"]
    assert error["code"] == "CONTAINER_ERROR"
    assert "null" in error["message"] and "API_KEY=<redacted>" in error["message"], error
    assert any("API_KEY=<redacted>" in s for s in streamed), "the streams really carried the error"
    logged = [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records] + [caplog.text]
    assert any("API_KEY=<redacted>" in line for line in logged), "the failure was logged"
    everything = "\n".join(answers + streamed + logged)
    for piece in (head, tail):
        assert piece not in everything


async def _failures(controller: Controller, name: str) -> bool:
    status, body = await controller.request("GET", f"/agents/{name}/events")
    if status != 200:
        return False
    items = body if isinstance(body, list) else body.get("items", [])
    return any(item.get("reason") == "CONTAINER_ERROR" and int(item.get("count", 1)) >= 2 for item in items)
