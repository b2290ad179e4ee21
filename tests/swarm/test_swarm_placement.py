"""spec.placement on the lab swarm, OOM kills told from other exits through the task's node, and the
runtime's report of which nodes give task processes no-new-privileges."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import pytest

from controller.config import Settings
from controller.runtime.swarm.nodes import NodeFacts
from tests.harness import TEST_IMAGE, make_settings, running, wait_for
from tests.swarm import lab

pytestmark = pytest.mark.docker


def constraints(name: str) -> list[str]:
    found = lab.cli(1, "service", "inspect", f"parallax-agent-{name}")
    assert found.returncode == 0, found.stderr
    return list(json.loads(found.stdout)[0]["Spec"]["TaskTemplate"]["Placement"].get("Constraints") or [])


async def test_placement_chooses_the_node_and_a_changed_constraint_moves_the_agent(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    status, body = await controller.request(
        "POST",
        "/agents",
        {"name": "sw-placed", "type": "claude", "placement": {"constraints": [f"node.hostname=={lab.hostname(3)}"]}},
    )
    assert status == 201, body
    agent = await controller.wait_agent("sw-placed", running, timeout=30)
    assert agent["status"]["node"] == lab.hostname(3)
    assert agent["spec"]["placement"] == {"constraints": [f"node.hostname=={lab.hostname(3)}"]}
    assert constraints("sw-placed") == [f"node.hostname=={lab.hostname(3)}"]

    status, body = await controller.request(
        "PATCH", "/agents/sw-placed", {"placement": {"constraints": [f"node.hostname!={lab.hostname(3)}"]}}
    )
    assert status == 200, body
    agent = await controller.wait_agent(
        "sw-placed", lambda a: running(a) and a["status"].get("node") == lab.hostname(2), timeout=30
    )
    assert constraints("sw-placed") == [f"node.hostname!={lab.hostname(3)}"]


async def test_a_constraint_no_node_meets_leaves_the_agent_pending_saying_why(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    label = f"node.labels.pxsw-zone-{uuid.uuid4().hex[:6]}==nowhere"
    status, body = await controller.request(
        "POST", "/agents", {"name": "sw-nowhere", "type": "claude", "placement": {"constraints": [label]}}
    )
    assert status == 201, body

    def explained(agent: dict[str, Any]) -> bool:
        error = agent["status"].get("error") or {}
        return error.get("code") == "RESOURCE_LIMIT" and "constraints" in error.get("message", "")

    agent = await controller.wait_agent("sw-nowhere", explained, timeout=30)
    assert agent["status"]["phase"] == "Pending"
    # loosened, it runs
    status, body = await controller.request("PATCH", "/agents/sw-nowhere", {"placement": {"constraints": []}})
    assert status == 200, body
    agent = await controller.wait_agent("sw-nowhere", lambda a: running(a) and "error" not in a["status"], timeout=30)
    assert agent["status"]["node"] in (lab.hostname(2), lab.hostname(3))


async def test_placement_refusals_name_the_field(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    cases = {
        "node.hostname=pxsw-node2": "no operator",
        "node.colour==blue": "unknown constraint key",
        "node.role==boss": "manager or worker",
        "node.labels.zone==": "no value",
    }
    for constraint, why in cases.items():
        status, body = await controller.request(
            "POST", "/agents", {"name": "sw-refused", "type": "claude", "placement": {"constraints": [constraint]}}
        )
        assert status == 422, (constraint, body)
        fields = {d["field"]: d["message"] for d in body["error"]["details"]}
        assert why in fields.get("placement.constraints[0]", ""), (constraint, body)
    assert await controller.agent("sw-refused") is None


async def test_an_oom_killed_task_is_oomkilled_not_just_exit_137(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    status, body = await controller.request(
        "POST",
        "/agents",
        {"name": "sw-oom", "type": "claude", "resources": {"memory": "32m"}, "env": {"ALLOC_MB": "200"}},
    )
    assert status == 201, body

    def oom(agent: dict[str, Any]) -> bool:
        return (agent["status"].get("error") or {}).get("code") == "RESOURCE_LIMIT"

    agent = await controller.wait_agent("sw-oom", oom, timeout=60)
    assert agent["status"]["lastState"]["reason"] == "OOMKilled", agent["status"]
    assert agent["status"]["lastState"]["exitCode"] == 137
    status, body = await controller.request("GET", "/agents/sw-oom/events")
    assert any(e["reason"] == "OOMKilled" for e in body["items"]), body


async def test_each_node_is_reported_with_whether_it_gives_no_new_privileges(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    for node in (2, 3):
        status, body = await controller.request(
            "POST",
            "/agents",
            {
                "name": f"sw-nnp{node}",
                "type": "claude",
                "placement": {"constraints": [f"node.hostname=={lab.hostname(node)}"]},
            },
        )
        assert status == 201, body

    async def reported() -> str | None:
        _, text = await controller.request("GET", "/metrics")
        lines = [line for line in str(text).splitlines() if line.startswith("parallax_swarm_node_no_new_privileges{")]
        return "\n".join(lines) if len(lines) == 2 else None

    lines = await wait_for(reported, timeout=40, what="both workers reported")
    # the lab's daemon.json sets no-new-privileges on every node
    assert f'parallax_swarm_node_no_new_privileges{{node="{lab.hostname(2)}"}} 1.0' in lines
    assert f'parallax_swarm_node_no_new_privileges{{node="{lab.hostname(3)}"}} 1.0' in lines


async def test_a_daemon_without_no_new_privileges_is_told_apart(tmp_path: Any, docker_daemon: None) -> None:
    """The same probe against the host's own daemon, whose daemon.json does not set no-new-privileges,
    and a container started without the option: reported as not enforced."""
    name = f"pxsw-nnp-{uuid.uuid4().hex[:6]}"
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--entrypoint", "sleep", TEST_IMAGE, "60"],
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr
    settings: Settings = make_settings(tmp_path, swarm_nodes=(("this-host", "unix:///var/run/docker.sock"),))
    facts = NodeFacts(settings)
    try:
        node = {"ID": "x", "Description": {"Hostname": "this-host"}}
        container = started.stdout.strip()
        assert await facts.probe_no_new_privileges(node, container) is False
        assert facts.no_new_privileges == {"this-host": False}
    finally:
        await facts.close()
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        await asyncio.sleep(0)
