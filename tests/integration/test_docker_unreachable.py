"""With the Docker socket unreachable, writes are still accepted and the failure is reported."""

from __future__ import annotations

import pytest

from tests.conftest import StartController

pytestmark = pytest.mark.docker


async def test_unreachable_docker_is_socket_error_but_writes_are_accepted(start_controller: StartController):
    controller = await start_controller(docker_socket="/nonexistent/docker.sock")
    status, body = await controller.request("POST", "/agents", {"name": "patient", "type": "claude"})
    assert status == 201, body
    agent = await controller.wait_agent("patient", lambda a: a["status"].get("error") is not None, timeout=15)
    assert agent["status"]["error"]["code"] == "SOCKET_ERROR"
    ready = next(c for c in agent["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "SOCKET_ERROR"
    status, body = await controller.request("GET", "/readyz")
    assert status == 503
    assert body["checks"]["docker"] == {
        "ok": False,
        "code": "SOCKET_ERROR",
        "message": body["checks"]["docker"]["message"],
    }
    assert body["checks"]["store"]["ok"] is True
