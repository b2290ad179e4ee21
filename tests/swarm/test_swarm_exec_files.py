"""Exec and files of an agent whose task runs on another swarm node: they reach its container through
that node's Docker endpoint (controller/runtime/swarm/live.py)."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from typing import Any

import pytest

from tests.harness import running
from tests.swarm import lab
from tests.swarm.test_swarm_runtime import task_container

pytestmark = pytest.mark.docker


async def test_exec_timeout_and_files_on_a_worker_node(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    name = f"pxex-sw-{uuid.uuid4().hex[:5]}"
    status, body = await controller.request("POST", "/agents", {"name": name, "type": "claude"})
    assert status == 201, body
    agent = await controller.wait_agent(name, running, timeout=40)
    node, container = task_container(agent)

    status, body = await controller.request(
        "POST", f"/agents/{name}/exec", {"command": ["sh", "-c", "hostname; echo err >&2; exit 3"]}
    )
    assert status == 200, body
    assert (body["exitCode"], body["stdout"], body["stderr"]) == (3, f"{name}\n", "err\n")

    status, body = await controller.request(
        "POST", f"/agents/{name}/exec", {"command": ["sh", "-c", "sleep 211 & sleep 212"], "timeoutSeconds": 1}
    )
    assert status == 200 and body["timedOut"] is True, body
    listing = lab.cli(node, "exec", container["Id"], "ps", "-o", "args").stdout
    assert "sleep 211" not in listing and "sleep 212" not in listing, listing

    data = os.urandom(2 * 1024 * 1024)
    files = f"{controller.base_url}/agents/{name}/files?" + urllib.parse.urlencode({"path": "/workspace/x.bin"})
    assert controller.session is not None
    async with controller.session.put(files, data=data) as resp:
        assert resp.status == 200, await resp.text()
    async with controller.session.get(files) as resp:
        assert resp.status == 200 and await resp.read() == data
    on_tmpfs = f"{controller.base_url}/agents/{name}/files?path=/tmp/t.bin"
    async with controller.session.put(on_tmpfs, data=data[:4096]) as resp:
        assert resp.status == 200, await resp.text()
    async with controller.session.get(on_tmpfs) as resp:
        assert resp.status == 200 and await resp.read() == data[:4096]
    lab.cli(node, "exec", container["Id"], "ln", "-s", "/etc", "/workspace/out")
    status, body = await controller.request("GET", f"/agents/{name}/files?path=/workspace/out/passwd")
    assert status == 403, body

    status, _ = await controller.request("PATCH", f"/agents/{name}", {"suspend": True})
    await controller.wait_agent(name, lambda a: a["status"].get("phase") == "Suspended", timeout=30)
    for method, path in (("POST", f"/agents/{name}/exec"), ("GET", f"/agents/{name}/files?path=/workspace")):
        status, body = await controller.request(method, path, {"command": ["true"]} if method == "POST" else None)
        assert status == 409 and body["error"]["code"] == "NOT_RUNNING", (method, body)
