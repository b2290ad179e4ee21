"""Each of the seed's error codes, produced by its real cause on the real daemon, and cleared when the
cause is fixed."""

from __future__ import annotations

import contextlib
import uuid

import aiodocker
import pytest

from tests.harness import TEST_IMAGE, Controller, docker_cli, running

pytestmark = pytest.mark.docker


async def _event_reasons(controller: Controller, name: str) -> list[str]:
    _, body = await controller.request("GET", f"/agents/{name}/events")
    return [e["reason"] for e in body["items"]]


def _has_error(code: str):
    return lambda a: (a["status"].get("error") or {}).get("code") == code


async def test_image_not_found_until_the_image_is_built(controller: Controller):
    image = f"parallax-test/late-{uuid.uuid4().hex[:8]}:1"
    await controller.request("POST", "/agents", {"name": "err-image", "type": "custom", "image": image})
    try:
        agent = await controller.wait_agent("err-image", _has_error("IMAGE_NOT_FOUND"))
        assert agent["status"]["phase"] == "Pending"
        assert "Build the image" in agent["status"]["error"]["message"]
        assert "IMAGE_NOT_FOUND" in await _event_reasons(controller, "err-image")
        code, out = await docker_cli("tag", TEST_IMAGE, image)
        assert code == 0, out
        agent = await controller.wait_agent("err-image", running, timeout=30)
        assert "error" not in agent["status"]
    finally:
        await docker_cli("rmi", image)


async def test_network_error_when_address_pools_are_exhausted(controller: Controller, docker: aiodocker.Docker):
    fillers: list[str] = []
    try:
        for i in range(80):
            try:
                network = await docker.networks.create({"Name": f"pxtest-fill-{uuid.uuid4().hex[:6]}-{i}"})
            except aiodocker.DockerError as exc:
                assert "address pool" in exc.message or "non-overlapping" in exc.message, exc.message
                break
            fillers.append(network.id)
        else:
            pytest.fail("the daemon's address pools did not run out after 80 networks")
        await controller.request("POST", "/agents", {"name": "err-net", "type": "claude", "network": "pxtest-err-net"})
        agent = await controller.wait_agent("err-net", _has_error("NETWORK_ERROR"))
        assert agent["status"]["phase"] == "Pending"
        assert "network" in agent["status"]["error"]["message"]
    finally:
        for network_id in fillers:
            with contextlib.suppress(aiodocker.DockerError):
                await (await docker.networks.get(network_id)).delete()
    agent = await controller.wait_agent("err-net", running, timeout=60)
    assert "error" not in agent["status"]
    assert "NETWORK_ERROR" in await _event_reasons(controller, "err-net")


async def test_resource_limit_when_docker_refuses_the_cpus_then_fixed(controller: Controller):
    await controller.request("POST", "/agents", {"name": "err-cpu", "type": "claude", "resources": {"cpu": 512}})
    agent = await controller.wait_agent("err-cpu", _has_error("RESOURCE_LIMIT"))
    assert "CPU" in agent["status"]["error"]["message"] or "cpu" in agent["status"]["error"]["message"]
    ready = next(c for c in agent["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RESOURCE_LIMIT"
    status, _ = await controller.request("PATCH", "/agents/err-cpu", {"resources": {"cpu": 0.5}})
    assert status == 200
    agent = await controller.wait_agent("err-cpu", running)
    assert "error" not in agent["status"]


async def test_resource_limit_when_oom_killed_then_fixed(controller: Controller):
    await controller.request(
        "POST",
        "/agents",
        {"name": "err-oom", "type": "claude", "resources": {"memory": "32m"}, "env": {"ALLOC_MB": "200"}},
    )
    agent = await controller.wait_agent("err-oom", _has_error("RESOURCE_LIMIT"))
    assert agent["status"]["lastState"]["reason"] == "OOMKilled"
    assert agent["status"]["lastState"]["exitCode"] == 137
    assert "OOMKilled" in await _event_reasons(controller, "err-oom")
    status, _ = await controller.request("PATCH", "/agents/err-oom", {"resources": {"memory": "512m"}})
    assert status == 200
    agent = await controller.wait_agent("err-oom", lambda a: running(a) and "error" not in a["status"], timeout=40)


async def test_socket_error_on_live_endpoints_when_docker_is_unreachable(start_controller):
    controller = await start_controller(docker_socket="/nonexistent/docker.sock")
    await controller.request("POST", "/agents", {"name": "err-socket", "type": "claude"})
    await controller.wait_agent("err-socket", _has_error("SOCKET_ERROR"))
    for path in ("/agents/err-socket/logs", "/agents/err-socket/metrics"):
        status, body = await controller.request("GET", path)
        assert status == 503, (path, body)
        assert body["error"]["code"] == "SOCKET_ERROR"
        assert "Docker daemon" in body["error"]["message"]
    assert "SOCKET_ERROR" in await _event_reasons(controller, "err-socket")


async def test_an_image_removed_after_agents_used_it_is_image_not_found_for_the_next(controller: Controller):
    """The controller remembers which images exist; removing one must still make the next agent that
    asks for it IMAGE_NOT_FOUND, not a confusing create failure."""
    image = f"parallax-test/gone-{uuid.uuid4().hex[:8]}:1"
    code, out = await docker_cli("tag", TEST_IMAGE, image)
    assert code == 0, out
    try:
        await controller.request("POST", "/agents", {"name": "err-gone-1", "type": "custom", "image": image})
        await controller.wait_agent("err-gone-1", running)
        code, out = await docker_cli("rmi", image)
        assert code == 0, out
        await controller.request("POST", "/agents", {"name": "err-gone-2", "type": "custom", "image": image})
        agent = await controller.wait_agent("err-gone-2", _has_error("IMAGE_NOT_FOUND"))
        assert agent["status"]["phase"] == "Pending"
        assert (await controller.agent("err-gone-1") or {})["status"]["phase"] == "Running"
    finally:
        await docker_cli("rmi", image)
