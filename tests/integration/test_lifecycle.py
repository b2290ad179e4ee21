"""Reconcile behaviour against the real daemon: restarts, drift, deletion, garbage collection."""

from __future__ import annotations

import asyncio
import json

import aiodocker
import pytest

from tests.harness import Controller, docker_cli, inspect, running, wait_for, wait_network_gone

pytestmark = pytest.mark.docker


async def test_killed_container_is_restarted(controller: Controller, docker: aiodocker.Docker):
    await controller.request("POST", "/agents", {"name": "victim", "type": "claude"})
    before = await controller.wait_agent("victim", running)
    container_id = before["status"]["containerId"]
    code, out = await docker_cli("kill", "parallax-agent-victim")
    assert code == 0, out
    after = await controller.wait_agent("victim", lambda a: running(a) and a["status"]["restartCount"] >= 1, timeout=30)
    assert after["status"]["restartCount"] == 1
    assert after["status"]["lastState"]["exitCode"] == 137
    info = await inspect(docker, "parallax-agent-victim")
    assert info is not None and info["State"]["Running"] and info["Id"] == container_id


async def test_spec_change_recreates_and_unchanged_put_touches_nothing(
    controller: Controller, docker: aiodocker.Docker
):
    await controller.request("POST", "/agents", {"name": "drift", "type": "claude", "resources": {"memory": "64m"}})
    first = await controller.wait_agent("drift", running)
    old = await inspect(docker, "parallax-agent-drift")
    assert old is not None

    same = {"name": "drift", "type": "claude", "resources": {"memory": "64m"}}
    status, body = await controller.request("PUT", "/agents/drift", same)
    assert status == 200, body
    assert body["metadata"]["generation"] == first["metadata"]["generation"]
    assert body["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    unchanged = await inspect(docker, "parallax-agent-drift")
    assert unchanged is not None and unchanged["Id"] == old["Id"]
    assert unchanged["State"]["StartedAt"] == old["State"]["StartedAt"]

    status, body = await controller.request("PATCH", "/agents/drift", {"spec": {"resources": {"memory": "128m"}}})
    assert status == 200, body
    assert body["metadata"]["generation"] == first["metadata"]["generation"] + 1
    agent = await controller.wait_agent(
        "drift",
        lambda a: (
            running(a)
            and a["status"]["observedGeneration"] == body["metadata"]["generation"]
            and a["status"]["containerId"] != old["Id"]
        ),
    )
    new = await inspect(docker, "parallax-agent-drift")
    assert new is not None and new["Id"] == agent["status"]["containerId"]
    assert new["HostConfig"]["Memory"] == 128 * 1024**2
    assert new["Config"]["Labels"]["parallax.config-hash"] != old["Config"]["Labels"]["parallax.config-hash"]
    assert await inspect(docker, old["Id"]) is None


async def test_delete_removes_container_and_record(controller: Controller, docker: aiodocker.Docker):
    await controller.request("POST", "/agents", {"name": "doomed", "type": "claude"})
    await controller.wait_agent("doomed", running)
    status, body = await controller.request("DELETE", "/agents/doomed")
    assert status == 202
    assert body["metadata"]["deletionTimestamp"] is not None
    await controller.wait_gone("doomed")
    assert await inspect(docker, "parallax-agent-doomed") is None
    status, body = await controller.request("GET", "/agents/doomed")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_orphan_with_our_labels_is_removed_and_stranger_is_left_alone(
    controller: Controller, docker: aiodocker.Docker
):
    settings = controller.settings
    orphan = await docker.containers.create(
        {
            "Image": "parallax/agent-testing:latest",
            "Labels": {
                "parallax.managed": "true",
                "parallax.agent": "ghost",
                "parallax.agent.uid": "nope",
                "parallax.instance": settings.instance,
            },
        },
        name="parallax-agent-ghost",
    )
    await orphan.start()
    stranger = await docker.containers.create(
        {"Image": "parallax/agent-testing:latest", "Labels": {"purpose": "not ours"}}, name="pxtest-stranger"
    )
    await stranger.start()
    try:

        async def orphan_gone() -> bool:
            return await inspect(docker, orphan.id) is None

        await wait_for(orphan_gone, timeout=30, what="the orphan container to be removed")
        info = await inspect(docker, stranger.id)
        assert info is not None and info["State"]["Running"]
    finally:
        await stranger.delete(force=True)


async def test_forged_container_with_wrong_uid_is_replaced(controller: Controller, docker: aiodocker.Docker):
    await controller.request("POST", "/agents", {"name": "real", "type": "claude"})
    agent = await controller.wait_agent("real", running)
    forged = await docker.containers.create(
        {
            "Image": "parallax/agent-testing:latest",
            "Labels": {
                "parallax.managed": "true",
                "parallax.agent": "real",
                "parallax.agent.uid": "forged-uid",
                "parallax.instance": controller.settings.instance,
            },
        },
        name="pxtest-forged-real",
    )
    await forged.start()

    async def forged_gone() -> bool:
        return await inspect(docker, forged.id) is None

    await wait_for(forged_gone, timeout=30, what="the forged container to be removed")
    info = await inspect(docker, "parallax-agent-real")
    assert info is not None and info["Id"] == agent["status"]["containerId"] and info["State"]["Running"]


@pytest.mark.parametrize(
    ("policy", "exit_code", "phase"),
    [("Never", 0, "Succeeded"), ("Never", 3, "Failed"), ("OnFailure", 0, "Succeeded")],
)
async def test_exiting_agent_that_is_not_restarted_ends_in_its_phase(
    controller: Controller, docker: aiodocker.Docker, policy: str, exit_code: int, phase: str
):
    name = f"exit-{policy.lower()}-{exit_code}"
    status, body = await controller.request(
        "POST",
        "/agents",
        {
            "name": name,
            "type": "claude",
            "restartPolicy": policy,
            "env": {"EXIT_AFTER": "0", "EXIT_CODE": str(exit_code)},
        },
    )
    assert status == 201, body
    agent = await controller.wait_agent(name, lambda a: a["status"].get("phase") == phase)
    assert agent["status"]["lastState"]["exitCode"] == exit_code
    assert agent["status"]["restartCount"] == 0
    info = await inspect(docker, agent["status"]["containerId"])
    assert info is not None and info["State"]["Status"] == "exited"


async def test_on_failure_restarts_a_failing_agent(controller: Controller):
    await controller.request(
        "POST",
        "/agents",
        {"name": "flaky", "type": "claude", "restartPolicy": "OnFailure", "env": {"EXIT_AFTER": "0", "EXIT_CODE": "2"}},
    )
    agent = await controller.wait_agent("flaky", lambda a: a["status"].get("restartCount", 0) >= 1)
    assert agent["status"]["lastState"]["exitCode"] == 2


async def test_crash_looping_agent_shows_crash_loop_backoff(controller: Controller):
    await controller.request(
        "POST", "/agents", {"name": "crasher", "type": "claude", "env": {"EXIT_AFTER": "0", "EXIT_CODE": "1"}}
    )
    agent = await controller.wait_agent("crasher", lambda a: a["status"].get("phase") == "CrashLoopBackOff")
    assert agent["status"]["restartCount"] >= 1
    assert agent["status"]["backoff"]["delaySeconds"] == 10
    ready = next(c for c in agent["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "CrashLoopBackOff"
    # The next exit, 10 s later, doubles the back-off.
    agent = await controller.wait_agent(
        "crasher", lambda a: (a["status"].get("backoff") or {}).get("delaySeconds") == 20, timeout=40
    )
    assert agent["status"]["restartCount"] >= 2
    assert agent["status"]["phase"] == "CrashLoopBackOff"


async def test_oom_killed_agent_reports_resource_limit(controller: Controller):
    await controller.request(
        "POST",
        "/agents",
        {
            "name": "hungry",
            "type": "claude",
            "restartPolicy": "Never",
            "resources": {"memory": "32m"},
            "env": {"ALLOC_MB": "200"},
        },
    )
    agent = await controller.wait_agent("hungry", lambda a: a["status"].get("phase") == "Failed")
    assert agent["status"]["lastState"]["reason"] == "OOMKilled"
    assert agent["status"]["error"]["code"] == "RESOURCE_LIMIT"


async def test_suspend_stops_the_container_and_resume_starts_it(controller: Controller, docker: aiodocker.Docker):
    await controller.request("POST", "/agents", {"name": "sleeper", "type": "claude"})
    await controller.wait_agent("sleeper", running)
    status, _ = await controller.request("PATCH", "/agents/sleeper", {"suspend": True})
    assert status == 200
    await controller.wait_agent("sleeper", lambda a: a["status"].get("phase") == "Suspended")
    info = await inspect(docker, "parallax-agent-sleeper")
    assert info is not None and not info["State"]["Running"]
    await controller.request("PATCH", "/agents/sleeper", {"suspend": False})
    await controller.wait_agent("sleeper", running)


async def test_missing_image_reports_image_not_found(controller: Controller):
    await controller.request(
        "POST", "/agents", {"name": "noimage", "type": "custom", "image": "parallax-test/absent:1"}
    )
    agent = await controller.wait_agent("noimage", lambda a: a["status"].get("error") is not None)
    assert agent["status"]["error"]["code"] == "IMAGE_NOT_FOUND"
    assert agent["status"]["phase"] == "Pending"


async def test_list_filters_by_label_type_and_phase(controller: Controller):
    await controller.request("POST", "/agents", {"name": "a1", "type": "claude", "labels": {"team": "x"}})
    await controller.request("POST", "/agents", {"name": "a2", "type": "codex", "labels": {"team": "y"}})
    _, body = await controller.request("GET", "/agents?labelSelector=team%3Dx")
    assert [a["metadata"]["name"] for a in body["items"]] == ["a1"]
    _, body = await controller.request("GET", "/agents?type=codex")
    assert [a["metadata"]["name"] for a in body["items"]] == ["a2"]
    await controller.wait_agent("a1", running)
    await controller.wait_agent("a2", running)
    _, body = await controller.request("GET", "/agents?phase=Running")
    assert sorted(a["metadata"]["name"] for a in body["items"]) == ["a1", "a2"]
    status, body = await controller.request("GET", "/agents?phase=Sleeping")
    assert status == 400


async def test_post_wait_answers_once_running(controller: Controller):
    status, body = await controller.request(
        "POST", "/agents?wait=true&timeout=30", {"name": "patient", "type": "claude"}
    )
    assert status == 201
    assert body["status"]["phase"] == "Running"
    assert json.dumps(body)


async def test_a_network_with_a_container_created_on_it_is_not_collected(start_controller, docker: aiodocker.Docker):
    """Garbage collection takes a managed network no agent asks for only once no container is configured
    for it: a created container (not started yet) is no endpoint of its network, and starting it after
    the network was removed fails."""
    controller = await start_controller(egress_default="AllowAll")
    network = f"held-{controller.settings.instance[-8:]}"
    await controller.request("POST", "/agents", {"name": "holder", "type": "claude", "network": network})
    await controller.wait_agent("holder", running)
    stranger = f"{network}-created"
    code, out = await docker_cli("create", "--name", stranger, "--network", network, "parallax/agent-testing:latest")
    assert code == 0, out
    try:
        status, _ = await controller.request("DELETE", "/agents/holder")
        assert status == 202
        await controller.wait_gone("holder")
        await asyncio.sleep(3 * controller.settings.resync_seconds)  # resyncs, each collecting networks
        found = await (await docker.networks.get(network)).show()
        assert found["Containers"] == {}, found["Containers"]  # no endpoint: only the created container holds it
    finally:
        await docker_cli("rm", "-f", stranger)

    await wait_network_gone(docker, network, "the network to be collected once the container is gone")
