"""Changes made to our containers and networks behind the controller's back are undone."""

from __future__ import annotations

import aiodocker
import pytest

from tests.harness import Controller, docker_cli, inspect, running, wait_for

pytestmark = pytest.mark.docker


EGRESS = pytest.mark.parametrize("egress", ["AllowAll", "Allowlist"])
"""An open agent is on its network; a restricted one on that network's internal twin (and behind the
egress gateway, which must follow the network when it is made again)."""


def _joined(network: str, egress: str) -> str:
    return network if egress == "AllowAll" else f"{network}-egress"


async def _started(controller: Controller, name: str, **extra: object) -> dict:
    status, body = await controller.request("POST", "/agents", {"name": name, "type": "claude", **extra})
    assert status == 201, body
    return await controller.wait_agent(name, running)


async def test_removed_container_is_recreated(controller: Controller, docker: aiodocker.Docker):
    before = await _started(controller, "drift-rm")
    code, out = await docker_cli("rm", "-f", "parallax-agent-drift-rm")
    assert code == 0, out
    after = await controller.wait_agent(
        "drift-rm", lambda a: running(a) and a["status"]["containerId"] != before["status"]["containerId"]
    )
    info = await inspect(docker, "parallax-agent-drift-rm")
    assert info is not None and info["Id"] == after["status"]["containerId"] and info["State"]["Running"]


async def test_stopped_container_is_started_again(controller: Controller, docker: aiodocker.Docker):
    before = await _started(controller, "drift-stop")
    code, out = await docker_cli("stop", "-t", "1", "parallax-agent-drift-stop")
    assert code == 0, out
    after = await controller.wait_agent("drift-stop", lambda a: running(a) and a["status"]["restartCount"] >= 1)
    assert after["status"]["containerId"] == before["status"]["containerId"]


async def test_renamed_container_gets_its_name_back(controller: Controller, docker: aiodocker.Docker):
    before = await _started(controller, "drift-name")
    code, out = await docker_cli("rename", "parallax-agent-drift-name", "pxtest-stolen-name")
    assert code == 0, out

    async def renamed_back() -> bool:
        info = await inspect(docker, "parallax-agent-drift-name")
        return info is not None and info["Id"] == before["status"]["containerId"]

    await wait_for(renamed_back, timeout=20, what="the container to be renamed back")
    assert await inspect(docker, "pxtest-stolen-name") is None


@EGRESS
async def test_disconnected_container_is_reconnected(controller: Controller, docker: aiodocker.Docker, egress: str):
    await _started(controller, "drift-dis", egress={"policy": egress})
    network = _joined(controller.settings.network, egress)
    code, out = await docker_cli("network", "disconnect", "-f", network, "parallax-agent-drift-dis")
    assert code == 0, out

    async def reconnected() -> bool:
        info = await inspect(docker, "parallax-agent-drift-dis")
        return info is not None and network in info["NetworkSettings"]["Networks"]

    await wait_for(reconnected, timeout=20, what="the container to be reconnected")


@EGRESS
async def test_removed_managed_network_is_recreated_and_rejoined(
    start_controller, docker: aiodocker.Docker, egress: str
):
    controller = await start_controller()
    network = _joined(f"{controller.settings.network}-drift", egress)
    before = await _started(
        controller, "drift-net", network=f"{controller.settings.network}-drift", egress={"policy": egress}
    )
    # A running controller reconnects a disconnected container within milliseconds, so the network is
    # removed while it is stopped; the next controller must notice and repair it.
    await controller.stop()
    code, out = await docker_cli("network", "disconnect", "-f", network, "parallax-agent-drift-net")
    assert code == 0, out
    code, out = await docker_cli("network", "rm", network)
    assert code == 0, out
    await start_controller()

    async def rejoined() -> bool:
        info = await inspect(docker, "parallax-agent-drift-net")
        if info is None or network not in info["NetworkSettings"]["Networks"]:
            return False
        return "drift-net" in (info["NetworkSettings"]["Networks"][network].get("Aliases") or [])

    await wait_for(rejoined, timeout=30, what="the agent to be back on its network")
    info = await inspect(docker, "parallax-agent-drift-net")
    assert info is not None and info["Id"] == before["status"]["containerId"], "the container was not kept"
    net = await (await docker.networks.get(network)).show()
    assert net["Labels"]["parallax.managed"] == "true"


@EGRESS
async def test_container_docker_can_no_longer_start_is_replaced(
    start_controller, docker: aiodocker.Docker, egress: str
):
    """A stopped container whose network was removed and made again refers to the old network's id:
    Docker refuses every start of it ("network … not found"). After two refusals the agent gets a new
    container, says so in an event, and runs; before, it stayed in CONTAINER_ERROR/NETWORK_ERROR forever."""
    controller = await start_controller()
    network = _joined(f"{controller.settings.network}-unstartable", egress)
    before = await _started(
        controller,
        "drift-unstartable",
        network=f"{controller.settings.network}-unstartable",
        egress={"policy": egress},
    )
    await controller.stop()
    for argv in (("stop", "-t", "1", "parallax-agent-drift-unstartable"), ("network", "rm", network)):
        code, out = await docker_cli(*argv)
        assert code == 0, out
    controller = await start_controller()

    after = await controller.wait_agent(
        "drift-unstartable",
        lambda a: running(a) and a["status"]["containerId"] != before["status"]["containerId"],
        timeout=60,
    )
    info = await inspect(docker, "parallax-agent-drift-unstartable")
    assert info is not None and info["Id"] == after["status"]["containerId"] and info["State"]["Running"]
    assert network in info["NetworkSettings"]["Networks"]
    if egress != "AllowAll":
        # the new network's gateway address is where the new container's proxy variables point; the
        # container may be made again for that reason before Docker has refused it twice (no Replaced)
        gateway = (await (await docker.networks.get(network)).show())["IPAM"]["Config"][0]["Gateway"]
        assert f"HTTP_PROXY=http://{gateway}:3128" in info["Config"]["Env"]
        return
    assert after["status"]["restartCount"] == 1 and "startFailures" not in after["status"]
    _, events = await controller.request("GET", "/agents/drift-unstartable/events")
    replaced = [e for e in events["items"] if e["reason"] == "Replaced"]
    assert len(replaced) == 1 and "not found" in replaced[0]["message"], events
