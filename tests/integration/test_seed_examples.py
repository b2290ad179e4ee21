"""The seed document's POST examples, sent as written, against a real Docker daemon."""

from __future__ import annotations

from typing import Any

import aiodocker
import pytest

from tests.harness import Controller, docker_exec, inspect, running, wait_for, wait_network_gone

pytestmark = pytest.mark.docker


async def post_seed_example(
    controller: Controller, docker: aiodocker.Docker, name: str, raw: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST the seed's body byte for byte; wait until the agent runs: (the POST's answer, docker inspect)."""
    status, body = await controller.request("POST", "/agents", raw=raw)
    assert status == 201, body
    agent = await controller.wait_agent(name, running)
    info = await inspect(docker, f"parallax-agent-{name}")
    assert info is not None and info["State"]["Running"]
    assert info["Id"] == agent["status"]["containerId"]
    return body, info


async def test_spawn_with_resources_gets_memory_and_cpu_limits(controller: Controller, docker: aiodocker.Docker):
    raw = '{\n"name": "heavy-analyzer",\n"type": "claude",\n"resources": {\n"memory": "1g",\n"cpu": 1.0\n}\n}'
    _, info = await post_seed_example(controller, docker, "heavy-analyzer", raw)
    assert info["HostConfig"]["Memory"] == 1024**3
    assert info["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert info["Config"]["Labels"]["parallax.agent"] == "heavy-analyzer"
    assert info["Config"]["Labels"]["parallax.agent.type"] == "claude"


async def test_spawn_with_volume_mounts_it_read_only(controller: Controller, docker: aiodocker.Docker):
    raw = '{\n"name": "file-processor",\n"type": "claude",\n"volumes": [\n"/host/data:/data:ro"\n]\n}'
    _, info = await post_seed_example(controller, docker, "file-processor", raw)
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/data"]["Source"] == "/host/data"
    assert mounts["/data"]["RW"] is False
    code, out = await docker_exec("parallax-agent-file-processor", "touch", "/data/x")
    assert code != 0 and "Read-only file system" in out


async def test_spawn_with_secret_passes_env_and_never_echoes_it(controller: Controller, docker: aiodocker.Docker):
    raw = '{\n"name": "secure-agent",\n"type": "claude",\n"env": {\n"API_KEY": "sk-..."\n}\n}'
    body, info = await post_seed_example(controller, docker, "secure-agent", raw)
    assert "sk-..." not in str(body)
    assert body["spec"]["env"] == {"API_KEY": "<redacted>"}
    assert "sk-..." not in str(await controller.agent("secure-agent"))
    assert "API_KEY=sk-..." in info["Config"]["Env"]
    code, out = await docker_exec("parallax-agent-secure-agent", "sh", "-c", 'echo "$API_KEY"')
    assert code == 0 and out.strip() == "sk-..."
    _, listing = await controller.request("GET", "/agents")
    assert "sk-..." not in str(listing)


@pytest.mark.parametrize("egress_default", ["AllowAll", "Allowlist"])
async def test_custom_network_is_created_and_joined(start_controller, docker: aiodocker.Docker, egress_default: str):
    """With open egress the agent is on the seed's network itself; behind the egress gateway (the server
    default) on that network's internal twin ``custom-network-egress``, where its peers reach it by name."""
    controller = await start_controller(egress_default=egress_default)
    joined = "custom-network" if egress_default == "AllowAll" else "custom-network-egress"
    raw = '{\n"name": "isolated-agent",\n"type": "claude",\n"network": "custom-network"\n}'
    _, info = await post_seed_example(controller, docker, "isolated-agent", raw)
    assert list(info["NetworkSettings"]["Networks"]) == [joined]
    assert "isolated-agent" in info["NetworkSettings"]["Networks"][joined]["Aliases"]
    network = await (await docker.networks.get(joined)).show()
    assert network["Labels"]["parallax.managed"] == "true"
    assert network["Internal"] is (egress_default != "AllowAll")

    status, _ = await controller.request("DELETE", "/agents/isolated-agent")
    assert status == 202
    await controller.wait_gone("isolated-agent")

    await wait_network_gone(docker, joined, "the unused managed network to be collected")


async def test_agents_on_one_network_reach_each_other_by_name(controller: Controller):
    # agent-2 serves a greeting on port 7000; agent-1 connects to it by the name "agent-2".
    # (ICMP ping needs CAP_NET_RAW, which hardened agents do not have; TCP shows the same reachability.)
    status, body = await controller.request(
        "POST",
        "/agents",
        {
            "name": "agent-2",
            "type": "claude",
            "command": ["nc", "-ll", "-p", "7000", "-e", "echo", "hello from agent-2"],
        },
    )
    assert status == 201, body
    status, body = await controller.request("POST", "/agents", {"name": "agent-1", "type": "claude"})
    assert status == 201, body
    for name in ("agent-1", "agent-2"):
        await controller.wait_agent(name, running)

    async def greeting() -> str:
        code, out = await docker_exec("parallax-agent-1", "nc", "-w", "2", "agent-2", "7000")
        return out if code == 0 and "hello from agent-2" in out else ""

    assert "hello from agent-2" in await wait_for(greeting, timeout=15, what="agent-1 to reach agent-2 by name")
    code, out = await docker_exec("parallax-agent-1", "nslookup", "agent-2")
    assert code == 0 and "Address" in out, out
