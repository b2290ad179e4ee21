"""PARALLAX_RUNTIME=swarm on a real 3-node swarm (tests/swarm/lab.py): agents as one-replica services,
seen the way a user sees them (the API, and each node's own Docker)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.harness import Controller, running, wait_for
from tests.swarm import lab

pytestmark = pytest.mark.docker


def service(name: str) -> dict[str, Any] | None:
    found = lab.cli(1, "service", "inspect", f"parallax-agent-{name}")
    return json.loads(found.stdout)[0] if found.returncode == 0 else None


def task_container(agent: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The agent's running task container, inspected through its own node's socket."""
    node = lab.node_of(agent["status"]["node"])
    listed = lab.cli(node, "ps", "-q", "--filter", f"label=parallax.agent={agent['metadata']['name']}")
    ids = listed.stdout.split()
    assert len(ids) == 1, f"node {node} runs {ids} for {agent['metadata']['name']}"
    return node, json.loads(lab.cli(node, "inspect", ids[0]).stdout)[0]


async def events(controller: Controller, name: str) -> list[str]:
    _, body = await controller.request("GET", f"/agents/{name}/events")
    return [f"{e['reason']}: {e['message']}" for e in body["items"]]


async def test_agent_is_a_one_replica_service_with_its_limits_and_hardening_on_the_node(
    start_swarm_controller: Any,
) -> None:
    controller = await start_swarm_controller()
    own_network = f"{controller.settings.network}-one"  # not the default network, which is never collected
    status, body = await controller.request(
        "POST",
        "/agents",
        {
            "name": "sw-one",
            "type": "claude",
            "network": own_network,
            "env": {"API_KEY": "sk-swarm-secret-1234"},
            "resources": {"memory": "96m", "cpu": 0.25, "pids": 100},
            "args": ["--fast"],
            "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}},
        },
    )
    assert status == 201, body
    agent = await controller.wait_agent("sw-one", running, timeout=30)
    assert agent["status"]["node"] in (lab.hostname(2), lab.hostname(3))  # the manager is drained
    assert agent["spec"]["env"] == {"API_KEY": "<redacted>"}

    spec = service("sw-one")
    assert spec is not None
    assert spec["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
    assert spec["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
    assert spec["Spec"]["Labels"]["parallax.agent"] == "sw-one"
    assert spec["ID"] == agent["status"]["containerId"]
    resources = spec["Spec"]["TaskTemplate"]["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 250_000_000, "MemoryBytes": 96 * 2**20, "Pids": 100}
    assert resources["Reservations"] == {"NanoCPUs": 250_000_000, "MemoryBytes": 96 * 2**20}

    node, container = task_container(agent)
    host = container["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (96 * 2**20, 250_000_000, 100)
    assert host["ReadonlyRootfs"] is True and host["Init"] is True
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["CAP_NET_BIND_SERVICE"]
    assert container["Config"]["User"] == "1000:1000" or container["Config"]["User"] == ""
    assert container["Config"]["OpenStdin"] is True
    assert container["Args"][-1] == "--fast"
    mounts = {m["Destination"]: m["Type"] for m in container["Mounts"]}
    assert mounts == {"/tmp": "tmpfs", "/home/agent": "tmpfs", "/workspace": "volume"}
    proc = lab.cli(node, "exec", container["Id"], "cat", "/proc/1/status").stdout
    assert "NoNewPrivs:\t1" in proc  # from the node's daemon.json: a service spec cannot say it
    caps = lab.cli(node, "exec", container["Id"], "grep", "CapBnd", "/proc/self/status").stdout
    assert caps.split()[1] == "0000000000000400"  # the bounding set: NET_BIND_SERVICE only
    written = lab.cli(node, "exec", container["Id"], "touch", "/usr/x")
    assert written.returncode != 0 and "Read-only file system" in written.stderr

    # logs through the manager, metrics and send through the task's node
    status, text = await controller.request("GET", "/agents/sw-one/logs")
    assert status == 200 and "agent sw-one started" in text
    await wait_for(
        lambda: controller.request("GET", "/agents/sw-one/metrics"),
        what="a stats sample",
        timeout=15,
    )
    status, metrics = await controller.request("GET", "/agents/sw-one/metrics")
    assert status == 200 and metrics["memoryLimitBytes"] == 96 * 2**20, metrics
    assert "sk-swarm-secret-1234" not in json.dumps(await events(controller, "sw-one"))

    # a spec change updates the service in place: same service, new hash, the new limit on the node
    before = spec["Spec"]["Labels"]["parallax.config-hash"]
    status, body = await controller.request("PATCH", "/agents/sw-one", {"resources": {"memory": "128m"}})
    assert status == 200, body

    async def updated() -> dict[str, Any] | None:
        found = await controller.agent("sw-one")
        return found if found and running(found) and found["status"].get("observedGeneration") == 2 else None

    agent = await wait_for(updated, timeout=30, what="generation 2 running")
    updated_spec = service("sw-one")
    assert updated_spec is not None and updated_spec["Spec"]["Labels"]["parallax.config-hash"] != before
    assert updated_spec["ID"] == spec["ID"]  # the same service, updated
    assert any(e.startswith("Updating: spec changed (generation 2)") for e in await events(controller, "sw-one"))
    _, container = task_container(agent)
    assert container["HostConfig"]["Memory"] == 128 * 2**20

    # delete: the service goes, then garbage collection removes the managed overlay network
    network = agent["spec"]["network"]
    assert network == own_network
    assert json.loads(lab.cli(1, "network", "inspect", network).stdout)[0]["Driver"] == "overlay"
    status, _ = await controller.request("DELETE", "/agents/sw-one")
    assert status == 202
    await controller.wait_gone("sw-one", timeout=30)
    assert service("sw-one") is None
    await wait_for(
        lambda: asyncio.to_thread(lambda: lab.cli(1, "network", "inspect", network).returncode != 0),
        timeout=30,
        what=f"network {network} collected",
    )


async def test_agents_on_different_nodes_reach_each_other_by_name(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    for name in ("sw-a", "sw-b"):
        status, body = await controller.request(
            "POST", "/agents", {"name": name, "type": "claude", "env": {"LISTEN_PORT": "7000"}}
        )
        assert status == 201, body
    a = await controller.wait_agent("sw-a", running, timeout=30)
    b = await controller.wait_agent("sw-b", running, timeout=30)
    assert a["status"]["node"] != b["status"]["node"], "Swarm's spread put both on one node"
    node, container = task_container(b)

    async def answer() -> str:
        found = await asyncio.to_thread(lab.cli, node, "exec", container["Id"], "nc", "-w", "2", "sw-a", "7000")
        return found.stdout.strip()

    assert await wait_for(answer, timeout=20, what="sw-b reaching sw-a by name") == "hello from sw-a"


async def test_killed_task_is_replaced_per_restart_policy(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    status, body = await controller.request("POST", "/agents", {"name": "sw-kill", "type": "claude"})
    assert status == 201, body
    agent = await controller.wait_agent("sw-kill", running, timeout=30)
    node, container = task_container(agent)
    assert lab.cli(node, "kill", container["Id"]).returncode == 0

    def restarted(found: dict[str, Any]) -> bool:
        return running(found) and found["status"].get("restartCount") == 1

    agent = await controller.wait_agent("sw-kill", restarted, timeout=30)
    assert agent["status"]["lastState"]["exitCode"] == 137
    assert agent["status"]["containerId"] == service("sw-kill")["ID"]  # type: ignore[index]
    _, again = task_container(agent)
    assert again["Id"] != container["Id"]
    assert any(e.startswith("Restarted") for e in await events(controller, "sw-kill"))

    # Never: a killed task stays down, Failed
    status, body = await controller.request("PATCH", "/agents/sw-kill", {"restartPolicy": "Never"})
    assert status == 200, body
    agent = await controller.wait_agent(
        "sw-kill", lambda a: running(a) and a["status"].get("observedGeneration") == 2, timeout=30
    )
    node, container = task_container(agent)
    lab.cli(node, "kill", container["Id"])
    agent = await controller.wait_agent("sw-kill", lambda a: a["status"].get("phase") == "Failed", timeout=30)


async def test_controller_restart_adopts_services_and_collects_orphans_not_strangers(
    start_swarm_controller: Any,
) -> None:
    controller = await start_swarm_controller()
    for name in ("sw-keep1", "sw-keep2"):
        status, body = await controller.request("POST", "/agents", {"name": name, "type": "claude"})
        assert status == 201, body
    for name in ("sw-keep1", "sw-keep2"):
        await controller.wait_agent(name, running, timeout=30)
    ids = {name: service(name)["ID"] for name in ("sw-keep1", "sw-keep2")}  # type: ignore[index]
    instance = controller.settings.instance
    await controller.stop()

    # meanwhile: an orphan service labelled ours (no record), and a stranger's service
    network = controller.settings.network
    orphan = lab.cli(
        1, "service", "create", "-d", "--no-resolve-image", "--name", "parallax-agent-sw-orphan",
        "--label", "parallax.managed=true", "--label", f"parallax.instance={instance}",
        "--label", "parallax.agent=sw-orphan", "--label", "parallax.agent.uid=gone",
        "--network", network, "--endpoint-mode", "dnsrr", "--restart-condition", "none",
        lab.IMAGES[0],
    )  # fmt: skip
    assert orphan.returncode == 0, orphan.stderr
    stranger = lab.cli(
        1, "service", "create", "-d", "--no-resolve-image", "--name", f"stranger-{instance}",
        "--label", "parallax.agent=sw-keep1", lab.IMAGES[0],
    )  # fmt: skip
    assert stranger.returncode == 0, stranger.stderr
    try:
        again = await controller_again(start_swarm_controller)
        await wait_for(
            lambda: asyncio.to_thread(lambda: service("sw-orphan") is None), timeout=30, what="orphan removed"
        )
        for name in ("sw-keep1", "sw-keep2"):
            agent = await again.wait_agent(name, running, timeout=30)
            assert agent["status"]["containerId"] == ids[name]
            assert service(name)["ID"] == ids[name]  # type: ignore[index]
        assert lab.cli(1, "service", "inspect", f"stranger-{instance}").returncode == 0
    finally:
        lab.cli(1, "service", "rm", f"stranger-{instance}")


async def controller_again(start: Any) -> Controller:
    controller: Controller = await start()
    return controller


async def test_send_and_followed_logs_of_an_agent_on_a_worker(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller()
    status, body = await controller.request("POST", "/agents", {"name": "sw-talk", "type": "claude"})
    assert status == 201, body
    agent = await controller.wait_agent("sw-talk", running, timeout=30)
    assert agent["status"]["node"] != lab.hostname(1)
    timeout = aiohttp.ClientTimeout(total=20)
    url = f"{controller.base_url}/agents/sw-talk/logs?follow=true&tail=0"
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as stream:
        assert stream.status == 200
        status, body = await controller.request("POST", "/agents/sw-talk/send", {"message": "over the swarm"})
        assert status == 202, body
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = (await stream.content.readline()).decode()
            seen.append(line)
            if "received: over the swarm" in line:
                break
        assert any("received: over the swarm" in line for line in seen), seen

    # without an endpoint for its node: a clear error naming the node, at once
    await controller.stop()
    blind = await start_swarm_controller(swarm_nodes=())
    await blind.wait_agent("sw-talk", running, timeout=10)
    started = time.monotonic()
    status, body = await blind.request("POST", "/agents/sw-talk/send", {"message": "x"})
    assert time.monotonic() - started < 5
    assert status == 502 and agent["status"]["node"] in body["error"]["message"], body


async def test_bind_mounts_outside_the_shared_roots_are_refused(start_swarm_controller: Any) -> None:
    controller = await start_swarm_controller(swarm_shared_roots=("/host/shared",))
    status, body = await controller.request(
        "POST", "/agents", {"name": "sw-bind", "type": "claude", "volumes": ["/host/data:/data:ro"]}
    )
    assert status == 422, body
    assert body["error"]["details"][0]["field"] == "volumes[0]"
    assert "PARALLAX_SWARM_SHARED_ROOTS" in body["error"]["details"][0]["message"]


@pytest.mark.parametrize("endpoints", ["node endpoints", "the manager only"])
async def test_an_agent_that_says_it_needs_credentials_is_shown_needing_them(
    start_swarm_controller: Any, endpoints: str
) -> None:
    """The image's ``parallax: needs credentials:`` line is read from the task container's log on its node
    (or through the manager's service logs when the node has no endpoint): Running, not Ready."""
    line = "parallax: needs credentials: set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"
    overrides = {} if endpoints == "node endpoints" else {"swarm_nodes": ()}
    controller = await start_swarm_controller(**overrides)
    body = {"name": "sw-cred", "type": "claude", "command": ["sh", "-c", f"echo '{line}'; exec sleep 3600"]}
    status, answer = await controller.request("POST", "/agents", body)
    assert status == 201, answer

    def needs(agent: dict[str, Any]) -> bool:
        return any(
            c["type"] == "CredentialsReady" and c["status"] == "False" for c in agent["status"].get("conditions", [])
        )

    agent = await controller.wait_agent("sw-cred", needs, timeout=30)
    assert agent["status"]["phase"] == "Running"
    ready = next(c for c in agent["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NeedsCredentials")
    assert "ANTHROPIC_API_KEY" in ready["message"]
