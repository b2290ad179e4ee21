"""``spec.runtimeClassName: gvisor`` against the real daemon and Debian's runsc (scripts/setup-gvisor.sh
registers it): the agent's kernel is gVisor's, seen from inside; limits and the hardened settings hold;
agents reach each other by name; a failed start leaves no sandbox behind; admission refuses what
cannot be honoured, naming the field."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from controller.model.errors import AgentError
from controller.model.runtime_class import GVISOR_PIDS_BASE, GVISOR_PIDS_PER_PROCESS
from controller.runtime.docker.runtime import DockerRuntime
from controller.runtime.docker.sandbox import find_leftovers, remove_leftovers
from tests.conftest import StartController
from tests.harness import TEST_IMAGE, Controller, docker_exec, inspect, make_settings, running, wait_for

pytestmark = pytest.mark.docker


def gvisor_agent(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"type": "claude", "runtimeClassName": "gvisor", **spec},
    }


def fields(answer: dict[str, Any]) -> dict[str, str]:
    return {d["field"]: d["message"] for d in answer["error"]["details"]}


async def test_gvisor_agent_runs_on_gvisors_kernel_with_the_hardened_settings(
    controller: Controller, docker: aiodocker.Docker
) -> None:
    status, created = await controller.request(
        "POST", "/agents?wait=true&timeout=60", gvisor_agent("gv-kernel", resources={"pids": 64})
    )
    assert status == 201 and running(created), created
    assert created["spec"]["runtimeClassName"] == "gvisor"
    info = await inspect(docker, "parallax-agent-gv-kernel")
    assert info is not None
    host = info["HostConfig"]
    assert host["Runtime"] == "runsc"
    assert host["PidsLimit"] == GVISOR_PIDS_BASE + GVISOR_PIDS_PER_PROCESS * 64
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    container = "parallax-agent-gv-kernel"
    code, out = await docker_exec(container, "dmesg")
    assert code == 0 and "Starting gVisor" in out, out
    code, version = await docker_exec(container, "cat", "/proc/version")
    assert code == 0, version
    with open("/proc/version") as f:
        assert version.split()[2] != f.read().split()[2], version  # not the host's kernel release
    code, out = await docker_exec(container, "sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status")
    assert code == 0, out
    caps = dict(line.split(":\t") for line in out.strip().splitlines())
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapBnd"], 16) == 0, caps
    code, out = await docker_exec(container, "sh", "-c", "echo x > /etc/gvisor-test")
    assert code != 0, out
    code, out = await docker_exec(container, "awk", '$2 == "/" {print $4}', "/proc/mounts")
    assert code == 0 and out.strip().split(",")[0] == "ro", out  # the root filesystem, as gVisor mounted it
    code, out = await docker_exec(container, "sh", "-c", "echo x > /tmp/ok && echo x > /workspace/ok && cat /tmp/ok")
    assert code == 0 and out.strip() == "x", out


async def test_gvisor_agent_over_its_memory_limit_is_oom_killed(controller: Controller) -> None:
    body = gvisor_agent("gv-hungry", restartPolicy="Never", resources={"memory": "64m"}, env={"ALLOC_MB": "200"})
    status, created = await controller.request("POST", "/agents", body)
    assert status == 201, created
    agent = await controller.wait_agent("gv-hungry", lambda a: a["status"].get("phase") == "Failed", timeout=60)
    assert agent["status"]["lastState"]["reason"] == "OOMKilled", agent["status"]
    assert agent["status"]["error"]["code"] == "RESOURCE_LIMIT", agent["status"]


async def _processes_survive(container: str, count: int) -> bool:
    """Start ``count`` more sleeping processes in the agent; whether it is still alive afterwards."""
    script = f"for i in $(seq {count}); do sleep 300 & done; sleep 3; echo started"
    try:
        code, out = await docker_exec(container, "sh", "-c", script, timeout=20)
    except TimeoutError:
        return False
    return code == 0 and "started" in out


async def test_gvisor_pids_limit_allows_about_that_many_processes(
    controller: Controller, docker: aiodocker.Docker
) -> None:
    """Untranslated, a pids limit of 40 would kill the sandbox before its first process (44 host tasks
    idle); translated, 30 processes run, and 200 more do not (the sandbox usually dies of it)."""
    body = gvisor_agent("gv-pids", restartPolicy="Never", resources={"pids": 40})
    status, created = await controller.request("POST", "/agents?wait=true&timeout=60", body)
    assert status == 201 and running(created), created
    container = "parallax-agent-gv-pids"
    assert await _processes_survive(container, 30)
    code, out = await docker_exec(container, "sh", "-c", "ps | wc -l")
    assert code == 0 and int(out.strip()) >= 30, out
    agent = await controller.agent("gv-pids")
    assert agent is not None and running(agent), agent
    await _processes_survive(container, 200)

    async def held() -> str | None:
        """The limit held: the sandbox ended (what over-limit usually does), or it lives with far fewer
        than the 230 processes asked for (forks refused)."""
        info = await inspect(docker, container)
        if info is None or not info["State"]["Running"]:
            return "ended"
        try:
            code, out = await docker_exec(container, "sh", "-c", "ps | wc -l", timeout=10)
        except TimeoutError:
            return None
        alive = code == 0 and out.strip().isdigit() and int(out.strip()) < 80
        return f"alive with {out.strip()} processes" if alive else None

    await wait_for(held, timeout=60, what="the pids limit to hold against 200 more processes")


async def test_gvisor_agents_reach_each_other_by_name(controller: Controller) -> None:
    status, created = await controller.request(
        "POST", "/agents?wait=true&timeout=60", gvisor_agent("gv-server", env={"LISTEN_PORT": "7000"})
    )
    assert status == 201 and running(created), created
    status, created = await controller.request("POST", "/agents?wait=true&timeout=60", gvisor_agent("gv-client"))
    assert status == 201 and running(created), created

    async def answered() -> str | None:
        code, out = await docker_exec("parallax-agent-gv-client", "nc", "-w", "2", "gv-server", "7000")
        return out if code == 0 and "hello from" in out else None

    out = await wait_for(answered, timeout=20, what="gv-server to answer gv-client")
    assert "hello from gv-server" in out


async def test_failed_gvisor_start_leaves_no_sandbox_behind(docker: aiodocker.Docker, tmp_path: Path) -> None:
    """runsc 20221219 leaves its shim, sandbox and gofer running after a start that fails (here: an
    entrypoint that does not exist, without an init), ``docker rm`` does not remove them, and containerd's
    record of the task makes the next start fail with "id already in use". A start straight through the
    driver shows the leftovers; the runtime's start removes them."""
    settings = make_settings(tmp_path)
    body = {
        "Image": TEST_IMAGE,
        "Entrypoint": ["/no/such/binary"],
        "Labels": {"parallax.instance": settings.instance},
        "HostConfig": {"Runtime": "runsc", "Init": False},
    }
    runtime = DockerRuntime(settings)
    await runtime.open()
    container = await docker.containers.create(body, name=f"pxgv-failed-start-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(AgentError, match="no/such/binary"):
            await runtime.driver.start(container.id)
        assert (await asyncio.to_thread(find_leftovers, container.id)).found  # the bug, on this daemon
        with pytest.raises(AgentError, match="id already in use"):  # and containerd's record blocks a restart
            await runtime.start(container.id)
        assert not (await asyncio.to_thread(find_leftovers, container.id)).found
        with pytest.raises(AgentError, match="no/such/binary"):  # startable again: the real error
            await runtime.start(container.id)
        assert not (await asyncio.to_thread(find_leftovers, container.id)).found
    finally:
        await container.delete(force=True)
        await runtime.close()
        await remove_leftovers(container.id)  # should the assertions above have failed


async def test_gvisor_refusals_name_the_field(controller: Controller) -> None:
    status, answer = await controller.request("POST", "/agents", gvisor_agent("gv-bad", runtimeClassName="kata"))
    assert status == 422 and "spec.runtimeClassName" in fields(answer), answer
    status, answer = await controller.request("POST", "/agents", gvisor_agent("gv-small", resources={"memory": "16m"}))
    assert status == 422 and "32 MiB" in fields(answer)["spec.resources.memory"], answer
    status, _ = await controller.request("GET", "/agents/gv-small")
    assert status == 404


async def test_gvisor_is_refused_when_the_daemon_has_no_runsc(start_controller: StartController) -> None:
    """A daemon without the runtime: the controller is told runsc is registered under a name this daemon
    does not have, as on a machine where setup-gvisor.sh never ran."""
    controller = await start_controller(gvisor_runtime="pxgv-not-installed")
    status, answer = await controller.request("POST", "/agents", gvisor_agent("gv-none"))
    assert status == 422, answer
    message = fields(answer)["spec.runtimeClassName"]
    assert "runsc" in message and "setup-gvisor.sh" in message, message
    status, answer = await controller.request(
        "POST", "/agents", {"name": "gv-none", "type": "claude", "runtimeClassName": "gvisor"}
    )
    assert status == 422 and "runtimeClassName" in fields(answer), answer
    status, created = await controller.request("POST", "/agents", {"name": "gv-runc", "type": "claude"})
    assert status == 201 and created["spec"]["runtimeClassName"] == "runc", created


async def test_default_runtime_class_gvisor_applies_to_agents_that_name_none(
    start_controller: StartController, docker: aiodocker.Docker
) -> None:
    controller = await start_controller(default_runtime_class="gvisor")
    status, created = await controller.request(
        "POST", "/agents?wait=true&timeout=60", {"name": "gv-default", "type": "claude"}
    )
    assert status == 201 and running(created), created
    assert created["spec"]["runtimeClassName"] == "gvisor"
    info = await inspect(docker, "parallax-agent-gv-default")
    assert info is not None and info["HostConfig"]["Runtime"] == "runsc"
    status, created = await controller.request(
        "POST", "/agents?wait=true&timeout=60", {"name": "gv-runc", "type": "claude", "runtimeClassName": "runc"}
    )
    assert status == 201 and running(created), created
    info = await inspect(docker, "parallax-agent-gv-runc")
    assert info is not None and info["HostConfig"]["Runtime"] == "runc"


async def test_changing_the_runtime_class_recreates_the_container(
    controller: Controller, docker: aiodocker.Docker
) -> None:
    status, created = await controller.request(
        "POST", "/agents?wait=true&timeout=60", {"name": "gv-switch", "type": "claude"}
    )
    assert status == 201 and running(created), created
    before = await inspect(docker, "parallax-agent-gv-switch")
    assert before is not None and before["HostConfig"]["Runtime"] == "runc"
    status, patched = await controller.request("PATCH", "/agents/gv-switch", {"runtimeClassName": "gvisor"})
    assert status == 200, patched

    async def recreated() -> dict[str, Any] | None:
        info = await inspect(docker, "parallax-agent-gv-switch")
        if info and info["Id"] != before["Id"] and info["State"]["Running"]:
            return info
        return None

    after = await wait_for(recreated, timeout=60, what="the container under runsc")
    assert after["HostConfig"]["Runtime"] == "runsc"
    code, out = await docker_exec("parallax-agent-gv-switch", "dmesg")
    assert code == 0 and "gVisor" in out, out
