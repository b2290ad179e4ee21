"""An agent must never see a host path outside the allowed roots, at its first start or any later one.

Docker resolves a bind mount's host path again at every start, following symlinks. These tests play
the attacker: an agent (or a neighbour) that rewrites the directories its mounts are looked up in,
then waits for its own restart."""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from api.server.state import STORE
from controller.admission.admit import admit
from controller.model.agent import Agent
from controller.store.interface import Store
from tests.conftest import StartController
from tests.harness import Controller, docker_cli, docker_exec, inspect, running

pytestmark = pytest.mark.docker

SWAP_TO_ETC = "rm -rf /work/sub && ln -s /etc /work/sub; exit 1"
RUN = uuid.uuid4().hex[:6]  # container names are daemon-wide: fresh ones each run


def named(base: str) -> str:
    return f"{base}-{RUN}"


def unchecked(agent: Agent, volumes: tuple[str, ...]) -> Agent:
    """``agent`` with volumes admission never saw (as a concurrent writer could get past its check)."""
    agent.spec = dataclasses.replace(agent.spec, volumes=volumes)
    return agent


def store_of(controller: Controller) -> Store:
    assert controller.runner is not None
    return controller.runner.app[STORE]


def shared_dir(path: Path) -> Path:
    """``path`` and each directory made for it, writable by the test image's user (uid 1000)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True)
    for made in missing:
        made.chmod(0o777)
    return path


def error_code(agent: dict[str, Any]) -> str | None:
    return agent["status"].get("error", {}).get("code")


async def test_the_reported_self_escape_is_refused_at_admission(start_controller: StartController, tmp_path: Path):
    """The issue's reproduction: a read-write mount and a read-only mount inside it, and a command that
    replaces the inner directory with a link to /etc before exiting for its restart."""
    root = tmp_path / "r"
    shared_dir(root / "a" / "sub")
    controller = await start_controller(allowed_volume_roots=(f"{root}:rw",))
    body = {
        "name": "selfesc",
        "type": "claude",
        "restartPolicy": "Always",
        "volumes": [f"{root}/a:/work:rw", f"{root}/a/sub:/x:ro"],
        "command": ["/bin/sh", "-c", SWAP_TO_ETC],
    }
    status, answer = await controller.request("POST", "/agents", body)
    assert status == 403, answer
    fields = [d["field"] for d in answer["error"]["details"]]
    assert fields == ["volumes[1]"], answer
    assert "read-write" in answer["error"]["details"][0]["message"]
    assert await controller.agent("selfesc") is None, "nothing is stored"


async def test_a_record_that_got_past_admission_is_refused_at_creation(
    start_controller: StartController, docker: aiodocker.Docker, tmp_path: Path
):
    """The reconciler does not trust admission: a record written by any path (here straight into the
    store) whose mounts could redirect each other is never started."""
    root = tmp_path / "r"
    shared_dir(root / "a" / "sub")
    controller = await start_controller(allowed_volume_roots=(f"{root}:rw",))
    name = named("selfesc")
    body = {"name": name, "type": "claude", "restartPolicy": "Always", "command": ["/bin/sh", "-c", SWAP_TO_ETC]}
    agent, _ = admit(body, controller.settings)
    await store_of(controller).create(unchecked(agent, (f"{root}/a:/work:rw", f"{root}/a/sub:/x:ro")))
    found = await controller.wait_agent(name, lambda a: error_code(a) == "CONTAINER_ERROR")
    assert "volumes[1]" in found["status"]["error"]["message"]
    assert "not created" in found["status"]["error"]["message"]
    assert await inspect(docker, f"parallax-agent-{name}") is None


async def test_a_mount_swapped_for_a_symlink_is_refused_at_the_restart(
    start_controller: StartController, docker: aiodocker.Docker, tmp_path: Path
):
    """Admitted and started with a plain directory; while the container is down between restarts the
    directory becomes a link to /etc. The restart is refused; the container never sees the host's /etc."""
    root = tmp_path / "r"
    data = shared_dir(root / "data")
    (data / "marker").write_text("mine\n")
    controller = await start_controller(allowed_volume_roots=(f"{root}:rw",))
    body = {
        "name": f"swaprestart-{RUN}",
        "type": "claude",
        "restartPolicy": "Always",
        "volumes": [f"{data}:/data:ro"],
        "command": ["/bin/sh", "-c", "cat /data/marker; sleep 2; exit 1"],
    }
    status, answer = await controller.request("POST", "/agents", body)
    assert status == 201, answer
    await controller.wait_agent(f"swaprestart-{RUN}", running)
    (data / "marker").unlink()
    data.rmdir()
    data.symlink_to("/etc")
    found = await controller.wait_agent(f"swaprestart-{RUN}", lambda a: error_code(a) == "CONTAINER_ERROR", timeout=60)
    message = found["status"]["error"]["message"]
    assert "volumes[0]" in message and "exposes the host" in message and "not started" in message
    info = await inspect(docker, f"parallax-agent-swaprestart-{RUN}")
    assert info is not None and not info["State"]["Running"], "the exited container was not started again"
    data.unlink()
    shared_dir(data)
    (data / "marker").write_text("mine again\n")
    await controller.wait_agent(
        f"swaprestart-{RUN}", lambda a: running(a) and int(a["status"]["restartCount"]) >= 1, 60
    )


async def test_a_neighbour_cannot_redirect_an_agents_mount(
    start_controller: StartController, docker: aiodocker.Docker, tmp_path: Path
):
    """A read-only mount of one agent inside a read-write mount of another is refused at admission; and if
    it gets in anyway (here straight into the store, as two concurrent writers could each pass admission),
    whichever starts second is refused, and the first at its next start: the writer never redirects the reader."""
    root = tmp_path / "r"
    shared_dir(root / "a" / "sub")
    controller = await start_controller(allowed_volume_roots=(f"{root}:rw",))
    writer_body = {
        "name": f"writer-{RUN}",
        "type": "claude",
        "volumes": [f"{root}/a:/work:rw"],
        "command": ["/bin/sh", "-c", "sleep 3600"],
    }
    status, answer = await controller.request("POST", "/agents", writer_body)
    assert status == 201, answer
    await controller.wait_agent(f"writer-{RUN}", running)
    reader_body = {"name": f"reader-{RUN}", "type": "claude", "volumes": [f"{root}/a/sub:/x:ro"]}
    status, answer = await controller.request("POST", "/agents", reader_body)
    assert status == 403, answer  # refused at admission while the writer's record exists
    assert f"agent 'writer-{RUN}'" in answer["error"]["details"][0]["message"]
    assert answer["error"]["details"][0]["field"] == "volumes[0]"
    reader, _ = admit({"name": f"reader-{RUN}", "type": "claude", "command": ["sleep", "3600"]}, controller.settings)
    await store_of(controller).create(unchecked(reader, (f"{root}/a/sub:/x:ro",)))
    found = await controller.wait_agent(f"reader-{RUN}", lambda a: error_code(a) == "CONTAINER_ERROR")
    assert f"agent 'writer-{RUN}'" in found["status"]["error"]["message"]
    assert await inspect(docker, f"parallax-agent-reader-{RUN}") is None

    # The writer swaps the directory and waits to be restarted: it is not, while the reader exists.
    code, out = await docker_exec(
        f"parallax-agent-writer-{RUN}", "/bin/sh", "-c", "rm -rf /work/sub && ln -s /etc /work/sub"
    )
    assert code == 0, out
    code, out = await docker_cli("kill", f"parallax-agent-writer-{RUN}")
    assert code == 0, out
    found = await controller.wait_agent(f"writer-{RUN}", lambda a: error_code(a) == "CONTAINER_ERROR")
    assert f"agent 'reader-{RUN}'" in found["status"]["error"]["message"]
    assert await inspect(docker, f"parallax-agent-reader-{RUN}") is None, "the reader never ran with /etc"

    status, _ = await controller.request("DELETE", f"/agents/reader-{RUN}")
    assert status == 202
    await controller.wait_gone(f"reader-{RUN}")
    await controller.wait_agent(f"writer-{RUN}", running, timeout=60)


async def test_symlinks_inside_the_allowed_root_are_followed_by_the_check(
    start_controller: StartController, tmp_path: Path
):
    """A link inside the root pointing inside a neighbour's read-write directory counts as that
    directory: the lookup of every component is checked, not only the path as written."""
    root = tmp_path / "r"
    shared_dir(root / "a" / "sub")
    (root / "via").symlink_to(root / "a")
    controller = await start_controller(allowed_volume_roots=(f"{root}:rw",))
    body = {
        "name": f"vialink-{RUN}",
        "type": "claude",
        "volumes": [f"{root}/a:/work:rw", f"{root}/via/sub:/x:ro"],
    }
    status, answer = await controller.request("POST", "/agents", body)
    assert status == 403, answer
    assert [d["field"] for d in answer["error"]["details"]] == ["volumes[1]"]
    assert os.path.islink(root / "via")


async def test_agents_may_share_one_read_write_directory(start_controller: StartController, tmp_path: Path):
    """The rule refuses only what could redirect a mount: two agents mounting the same directory, or
    sibling directories, both start."""
    root = tmp_path / "r"
    shared_dir(root / "shared")
    shared_dir(root / "other")
    controller = await start_controller(allowed_volume_roots=(f"{root}:rw",))
    for name, volumes in (
        (f"share-1-{RUN}", [f"{root}/shared:/work:rw"]),
        (f"share-2-{RUN}", [f"{root}/shared:/work:rw", f"{root}/other:/other:ro"]),
    ):
        body = {"name": name, "type": "claude", "volumes": volumes, "command": ["/bin/sh", "-c", "sleep 3600"]}
        status, answer = await controller.request("POST", "/agents", body)
        assert status == 201, answer
    for name in (f"share-1-{RUN}", f"share-2-{RUN}"):
        await controller.wait_agent(name, running)
    code, out = await docker_exec(f"parallax-agent-share-1-{RUN}", "/bin/sh", "-c", "echo hi > /work/f")
    assert code == 0, out
    code, out = await docker_exec(f"parallax-agent-share-2-{RUN}", "cat", "/work/f")
    assert (code, out.strip()) == (0, "hi")
