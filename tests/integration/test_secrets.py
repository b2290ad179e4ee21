"""Secret hygiene: an env value reaches the container and nothing else.

One scenario drives every route with two known secrets in play (create, read, list, watch, replace,
patch, refused and invalid writes, apply, events, logs, metrics, restart, ``parallax describe``, delete)
while everything the server sends back (bodies and headers of every response, SSE and WebSocket streams,
the CLI's output) and everything it logs is kept; then the secrets are searched for in all of it.
The store file, which must hold them, is private to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from tests.harness import Controller, docker_exec, inspect, running

pytestmark = pytest.mark.docker

NAME = "sec-secret"
PARALLAX = str(Path(sys.executable).parent / "parallax")


class Recorder:
    """Calls the API and keeps everything it answered, headers included."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.seen: list[str] = []

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        session = self.controller.session
        assert session is not None
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with session.request(
            method, self.controller.base_url + path, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
        ) as resp:
            text = await resp.text()
            self.seen.append(f"{method} {path} -> {resp.status} {dict(resp.headers)}\n{text}")
            try:
                return resp.status, json.loads(text)
            except json.JSONDecodeError:
                return resp.status, text


async def stream(session: aiohttp.ClientSession, url: str, sink: list[str]) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            sink.append(f"{resp.status} {dict(resp.headers)}")
            async for chunk in resp.content.iter_any():
                sink.append(chunk.decode(errors="replace"))


async def websocket(session: aiohttp.ClientSession, url: str, sink: list[str]) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async with session.ws_connect(url) as ws:
            async for message in ws:
                sink.append(str(message.data))


async def test_secrets_reach_the_container_and_appear_in_no_response_stream_or_log(
    controller: Controller, docker: aiodocker.Docker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    secret, second = f"sk-sec-{uuid.uuid4().hex}", f"tok-sec-{uuid.uuid4().hex}"
    call = Recorder(controller)
    assert controller.session is not None
    streamed: list[str] = []
    base = controller.base_url.replace("http", "ws", 1)
    watchers = [
        asyncio.create_task(stream(controller.session, controller.base_url + "/events", streamed)),
        asyncio.create_task(stream(controller.session, controller.base_url + "/agents?watch=true", streamed)),
        asyncio.create_task(websocket(controller.session, base + "/ws", streamed)),
    ]
    try:
        status, created = await call(
            "POST", "/agents?wait=true&timeout=30", {"name": NAME, "type": "claude", "env": {"API_KEY": secret}}
        )
        assert status == 201 and created["status"]["phase"] == "Running", created
        assert created["spec"]["env"] == {"API_KEY": "<redacted>"}
        code, out = await docker_exec(f"parallax-agent-{NAME}", "sh", "-c", 'printf %s "$API_KEY"')
        assert (code, out) == (0, secret), "the secret must really reach the agent"

        for path in (f"/agents/{NAME}", "/agents", "/agents?labelSelector=team!=x", "/agents?type=claude"):
            assert (await call("GET", path))[0] == 200

        # A client sends back what it read: <redacted> keeps the stored value; a new secret joins it.
        _, current = await call("GET", f"/agents/{NAME}")
        current["metadata"]["labels"] = {"team": "sec"}
        current["spec"]["env"]["SECOND"] = second
        status, replaced = await call("PUT", f"/agents/{NAME}", current)
        assert status == 200 and replaced["spec"]["env"] == {"API_KEY": "<redacted>", "SECOND": "<redacted>"}
        status, _ = await call("PATCH", f"/agents/{NAME}", {"env": {"API_KEY": "<redacted>", "SECOND": second}})
        assert status == 200
        first_container = created["status"]["containerId"]
        agent = await controller.wait_agent(
            NAME, lambda a: running(a) and a["status"]["containerId"] != first_container, timeout=60
        )
        info = await inspect(docker, agent["status"]["containerId"])
        assert (
            info is not None
            and f"API_KEY={secret}" in info["Config"]["Env"]
            and f"SECOND={second}" in info["Config"]["Env"]
        )

        # Refusals of every kind, each carrying the secrets somewhere in the body.
        refusals = [
            ("PUT", {"name": NAME, "type": "claude", "env": {"API_KEY": secret}, "resources": {"memory": "lots"}}, 422),
            ("PUT", {"name": NAME, "type": "claude", "env": {"API_KEY": [secret]}}, 422),
            ("PUT", {"name": NAME, "type": "claude", "env": {"API_KEY": {"v": second}}}, 422),
            ("PUT", {"name": NAME, "type": "claude", "env": {"API_KEY": secret + "x" * 40000}}, 422),
            ("PUT", {"name": NAME, "type": "claude", "env": {"bad key": secret}}, 422),
            ("PUT", {"name": NAME, "type": "claude", "env": {"API_KEY": secret}, "volumes": ["/etc:/etc:ro"]}, 403),
            ("PUT", {"name": NAME, "type": "claude", "env": {"API_KEY": secret}, "privileged": True}, 403),
            ("PUT", {"name": "other", "type": "claude", "env": {"API_KEY": secret}}, 422),
            ("PATCH", {"env": {"API_KEY": secret}, "restartPolicy": "Sometimes"}, 422),
            ("PATCH", {"env": {"SECOND": 12345}}, 422),
            (
                "PUT",
                {"name": NAME, "type": "claude", "env": {"API_KEY": secret}, "metadata": {"resourceVersion": "1"}},
                422,
            ),
        ]
        for method, body, expected in refusals:
            status, answer = await call(method, f"/agents/{NAME}", body)
            assert status == expected, (method, body.keys(), answer)
        stale = {
            "apiVersion": "parallax.ai/v1",
            "kind": "Agent",
            "metadata": {"name": NAME, "resourceVersion": "1"},
            "spec": {"type": "claude", "env": {"API_KEY": secret}},
        }
        assert (await call("PUT", f"/agents/{NAME}", stale))[0] == 409
        assert (await call("POST", "/agents", {"name": NAME, "type": "claude", "env": {"API_KEY": secret}}))[0] == 409
        assert (await call("POST", "/agents", raw='{"name": "sec-x", "env": {"API_KEY": "' + secret + '"'))[0] == 400
        assert (await call("POST", "/agents", raw='{"env": {"K": "' + secret + '"}, ' + "[" * 40 + "]" * 40 + "}"))[
            0
        ] == 400

        # Declarative apply, planned and real, with a changed secret.
        manifest = {
            "apiVersion": "parallax.ai/v1",
            "kind": "Agent",
            "metadata": {"name": NAME, "labels": {"team": "sec"}},
        }
        manifest["spec"] = {"type": "claude", "env": {"API_KEY": secret, "SECOND": second + "-rotated"}}
        for query in ("?dryRun=true", ""):
            status, _ = await call("POST", "/apply" + query, [manifest])
            assert status == 200, status
        yaml_doc = (
            f"apiVersion: parallax.ai/v1\nkind: Agent\nmetadata: {{name: {NAME}}}\n"
            f"spec:\n  type: claude\n  env: {{API_KEY: {secret}}}\n  volumes: ['/etc:/x']\n"
        )
        status, _ = await call("POST", "/apply", raw=yaml_doc, content_type="application/yaml")
        assert status == 403, status

        second_container = agent["status"]["containerId"]
        await controller.wait_agent(
            NAME, lambda a: running(a) and a["status"]["containerId"] != second_container, timeout=60
        )
        for path in (f"/agents/{NAME}/events", f"/agents/{NAME}/logs?tail=all", f"/agents/{NAME}/metrics", "/metrics"):
            assert (await call("GET", path))[0] == 200, path
        assert (await call("POST", f"/agents/{NAME}/send", {"message": "hello"}))[0] == 202
        assert (await call("POST", f"/agents/{NAME}/restart"))[0] == 202
        assert (await call("GET", "/openapi.json"))[0] == 200
        for argv in (("describe", "agent", NAME), ("get", "agents")):
            proc = await asyncio.create_subprocess_exec(
                PARALLAX,
                *argv,
                env={**os.environ, "PARALLAX_SERVER": controller.base_url},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            printed, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0 and NAME in printed.decode(), printed
            call.seen.append(printed.decode(errors="replace"))
        await call("GET", "/readyz")
        status, _ = await call("DELETE", f"/agents/{NAME}?wait=true&timeout=30")
        assert status == 200
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    assert len(call.seen) > 30 and any("ADDED" in s for s in streamed), "the scenario and the watchers really ran"
    returned = "\n".join(call.seen + streamed)
    logged = (
        "\n".join(f"{r.getMessage()} {r.exc_text or ''} {getattr(r, 'agent', '')}" for r in caplog.records)
        + caplog.text
    )
    assert any("started container" in r.getMessage() for r in caplog.records), "the controller's logs were captured"
    for value in (secret, second):
        assert value not in returned
        assert value not in logged
    assert "<redacted>" in returned


async def test_the_store_file_is_private_to_its_owner(controller: Controller):
    status, _ = await controller.request("POST", "/agents", {"name": "sec-store", "type": "claude", "env": {"K": "v"}})
    assert status == 201
    path = controller.settings.store_path
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    for candidate in (path, path + "-wal", path + "-shm"):
        if os.path.exists(candidate):
            assert stat.S_IMODE(os.stat(candidate).st_mode) & 0o077 == 0, candidate
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
