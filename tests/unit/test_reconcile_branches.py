"""Every branch of ``Reconciler.reconcile``, through the runtime seam, without Docker.

The runtime is ``controller.runtime.fake.FakeRuntime`` (in memory, on a ``FakeClock``); the store is a
real ``SqliteStore`` in ``tmp_path``; records are admitted as the API admits them. Each test asserts what
a user would see: the record's status, its events, what the runtime holds and the calls made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.admission.admit import admit, spec_defaults
from controller.config import Settings
from controller.model.agent import Agent
from controller.model.clock import FakeClock
from controller.model.errors import (
    CONTAINER_ERROR,
    IMAGE_NOT_FOUND,
    NETWORK_ERROR,
    RESOURCE_LIMIT,
    SOCKET_ERROR,
    AgentError,
)
from controller.reconcile.decide import iso
from controller.reconcile.reconciler import Reconciler, Result
from controller.runtime.fake import Call, FakeInstance, FakeRuntime
from controller.runtime.interface import Runtime, RuntimeChange
from controller.store.interface import NotFound
from controller.store.sqlite import SqliteStore

IMAGE = "parallax/agent-claude:latest"
NETWORK = "parallax-agents"
CREDENTIALS_LINE = "parallax: needs credentials: ANTHROPIC_API_KEY is not set"


def as_runtime(fake: FakeRuntime) -> Runtime:
    """mypy checks here that the fake is structurally a ``Runtime``."""
    return fake


@dataclass
class World:
    """One controller's surroundings: clock, runtime, store; ``reconciler()`` makes a fresh controller."""

    clock: FakeClock
    runtime: FakeRuntime
    store: SqliteStore
    settings: Settings
    collected: list[str] = field(default_factory=list)
    current: Reconciler | None = None

    def reconciler(self) -> Reconciler:
        self.current = Reconciler(
            self.store,
            as_runtime(self.runtime),
            self.settings,
            now=self.runtime.wall_time,
            on_collected=self.collected.append,
        )
        return self.current

    async def reconcile(self, name: str) -> Result:
        return await (self.current or self.reconciler()).reconcile(name)

    async def create(self, body: dict[str, Any]) -> Agent:
        return await self.store.create(admit(body, self.settings)[0])

    async def replace(self, body: dict[str, Any]) -> Agent:
        return await self.store.replace(admit(body, self.settings)[0])

    async def get(self, name: str) -> Agent:
        return await self.store.get(name)

    async def status(self, name: str) -> dict[str, Any]:
        return (await self.store.get(name)).status

    async def reasons(self, name: str) -> list[str]:
        return [e.reason for e in await self.store.list_events(name)]

    async def running(self, body: dict[str, Any]) -> FakeInstance:
        """Create the agent, reconcile it to Running, and forget the calls that took; its instance."""
        agent = await self.create(body)
        await self.reconcile(agent.name)
        assert (await self.status(agent.name))["phase"] == "Running"
        (instance,) = self.runtime.held(agent.name)
        self.runtime.reset_calls()
        return instance


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(store_path=str(tmp_path / "data" / "agents.db"))
    store = SqliteStore(settings.store_path, spec_defaults(settings))
    await store.open()
    clock = FakeClock(start=1000.0)
    try:
        yield World(clock, FakeRuntime(clock, settings), store, settings)
    finally:
        await store.close()


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def stops(runtime: FakeRuntime) -> list[Call]:
    return [c for c in runtime.calls if c.verb == "stop"]


# -- creating and adopting ---------------------------------------------------------------------------


async def test_create_ensures_network_makes_workspace_creates_and_starts(world: World) -> None:
    agent = await world.create({"name": "a", "type": "claude"})
    result = await world.reconcile("a")

    (instance,) = world.runtime.held("a")
    assert world.runtime.verbs() == [
        "instances",
        "ensure_network",
        "image_present",
        "ensure_workspace",
        "create",
        "start",
        "instance",
        "recent_output",
    ]
    assert world.runtime.mutations() == [("create", "a"), ("start", instance.id)]
    assert world.runtime.networks[NETWORK].managed
    assert world.runtime.workspaces == {"parallax-workspace-a": "a"}
    assert instance.name == "parallax-agent-a" and instance.state == "running"
    assert instance.uid == agent.metadata.uid and instance.image == IMAGE
    assert instance.networks == [NETWORK] and instance.aliases == {NETWORK: ["a"]}
    status = await world.status("a")
    assert status["phase"] == "Running" and status["containerId"] == instance.id
    assert status["observedGeneration"] == 1 and status["restartCount"] == 0
    assert "error" not in status
    assert condition(status, "Ready")["status"] == "True"
    assert await world.reasons("a") == ["Created", "Started"]
    assert result.requeue_after == 3.0  # the credentials check looks again while the instance is young


async def test_restarted_controller_adopts_the_running_instance(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    before = await world.get("a")
    world.clock.advance(60)

    world.reconciler()  # a new controller process: same store, same runtime
    result = await world.reconcile("a")

    assert world.runtime.mutations() == []
    assert not {"create", "start", "stop", "remove"} & set(world.runtime.verbs())
    assert [i.id for i in world.runtime.held("a")] == [instance.id]
    after = await world.get("a")
    assert after.status == before.status and after.metadata.resource_version == before.metadata.resource_version
    assert await world.reasons("a") == ["Created", "Started"]
    assert result == Result()


# -- drift -------------------------------------------------------------------------------------------


async def test_spec_change_recreates_with_the_grace_period_and_resets_restart_count(world: World) -> None:
    old = await world.running({"name": "a", "type": "claude", "stopGracePeriodSeconds": 7})
    world.clock.advance(5)
    world.runtime.exit(old.id, 1)
    await world.reconcile("a")  # the first restart is immediate
    assert (await world.status("a"))["restartCount"] == 1
    world.runtime.reset_calls()

    await world.replace({"name": "a", "type": "claude", "stopGracePeriodSeconds": 7, "env": {"MODE": "fast"}})
    await world.reconcile("a")

    (new,) = world.runtime.held("a")
    assert new.id != old.id and new.config_hash != old.config_hash
    assert world.runtime.mutations() == [("stop", old.id), ("remove", old.id), ("create", "a"), ("start", new.id)]
    assert stops(world.runtime)[0].grace_seconds == 7 and old.stop_grace_seconds == [7]
    status = await world.status("a")
    assert status["phase"] == "Running" and status["containerId"] == new.id
    assert status["observedGeneration"] == 2
    assert status["restartCount"] == 0 and "lastState" not in status and "backoff" not in status
    assert (await world.reasons("a"))[-3:] == ["Recreating", "Created", "Started"]


async def test_same_spec_written_again_keeps_the_instance(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude", "labels": {"team": "x"}})
    await world.replace({"name": "a", "type": "claude", "labels": {"team": "y"}})
    await world.reconcile("a")
    assert world.runtime.mutations() == []
    assert [i.id for i in world.runtime.held("a")] == [instance.id]


async def test_restart_annotation_recreates_the_instance(world: World) -> None:
    old = await world.running({"name": "a", "type": "claude"})
    manifest = {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": "a", "annotations": {"parallax.ai/restartedAt": "2026-01-01T00:20:00Z"}},
        "spec": {"type": "claude"},
    }
    await world.replace(manifest)
    await world.reconcile("a")
    (new,) = world.runtime.held("a")
    assert new.id != old.id
    assert [v for v, _ in world.runtime.mutations()] == ["stop", "remove", "create", "start"]


# -- restarts and crash-loop backoff -----------------------------------------------------------------


async def test_crash_loop_restarts_at_once_then_backs_off_10s_doubling_to_300s(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.clock.advance(1)
    world.runtime.exit(instance.id, 1)
    result = await world.reconcile("a")
    assert world.runtime.mutations() == [("start", instance.id)]  # the first restart: immediate
    status = await world.status("a")
    assert status["phase"] == "Running" and status["restartCount"] == 1
    assert status["lastState"]["exitCode"] == 1 and status["lastState"]["reason"] == "Error"
    assert (await world.reasons("a"))[-2:] == ["Exited", "Restarted"]

    for restarts, delay in enumerate([10, 20, 40, 80, 160, 300, 300], start=2):
        world.runtime.reset_calls()
        world.clock.advance(1)  # it runs for one second, then fails again
        world.runtime.exit(instance.id, 1)
        result = await world.reconcile("a")
        status = await world.status("a")
        assert status["phase"] == "CrashLoopBackOff", delay
        assert result.requeue_after == pytest.approx(delay)
        assert status["backoff"]["delaySeconds"] == delay
        assert status["backoff"]["restartAt"] == iso(world.runtime.wall_time() + timedelta(seconds=delay))
        ready = condition(status, "Ready")
        assert ready["status"] == "False" and ready["reason"] == "CrashLoopBackOff"
        assert ready["message"] == f"back-off {delay}s restarting the exited container"
        assert world.runtime.mutations() == []
        assert (await world.store.list_events("a"))[-1].reason == "BackOff"

        # Half-way through the back-off: still waiting, no second BackOff event.
        world.clock.advance(delay / 2)
        events = len(await world.store.list_events("a"))
        result = await world.reconcile("a")
        assert result.requeue_after == pytest.approx(delay / 2)
        assert len(await world.store.list_events("a")) == events
        assert world.runtime.mutations() == []

        world.clock.advance(delay / 2)
        await world.reconcile("a")
        assert world.runtime.mutations() == [("start", instance.id)]
        status = await world.status("a")
        assert status["phase"] == "Running" and status["restartCount"] == restarts


async def test_backoff_resets_after_the_instance_ran_ten_minutes(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    for wait in (0, 10, 20):  # exits after one second: immediate, then 10 s, then 20 s
        world.clock.advance(1)
        world.runtime.exit(instance.id, 1)
        await world.reconcile("a")
        world.clock.advance(wait)
        await world.reconcile("a")
    assert (await world.status("a"))["restartCount"] == 3
    assert (await world.status("a"))["backoff"]["delaySeconds"] == 20

    world.clock.advance(600)  # this time it ran for ten minutes before exiting
    world.runtime.reset_calls()
    world.runtime.exit(instance.id, 1)
    await world.reconcile("a")
    assert world.runtime.mutations() == [("start", instance.id)]
    status = await world.status("a")
    assert status["phase"] == "Running" and status["restartCount"] == 4
    assert status["backoff"]["delaySeconds"] == 0

    world.clock.advance(1)  # and a quick exit after that starts the sequence again at 10 s
    world.runtime.exit(instance.id, 1)
    result = await world.reconcile("a")
    assert (await world.status("a"))["phase"] == "CrashLoopBackOff"
    assert result.requeue_after == pytest.approx(10)


async def test_backoff_survives_a_controller_restart(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    for _ in range(2):
        world.clock.advance(1)
        world.runtime.exit(instance.id, 1)
        await world.reconcile("a")
    assert (await world.status("a"))["phase"] == "CrashLoopBackOff"
    world.runtime.reset_calls()
    world.clock.advance(4)

    world.reconciler()
    result = await world.reconcile("a")
    assert result.requeue_after == pytest.approx(6)
    assert world.runtime.mutations() == []
    assert (await world.status("a"))["phase"] == "CrashLoopBackOff"


async def test_on_failure_exit_0_succeeds_and_is_not_restarted(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude", "restartPolicy": "OnFailure"})
    world.clock.advance(3)
    world.runtime.exit(instance.id, 0)
    result = await world.reconcile("a")
    world.clock.advance(400)
    await world.reconcile("a")  # and it stays so
    assert world.runtime.mutations() == []
    status = await world.status("a")
    assert status["phase"] == "Succeeded" and status["restartCount"] == 0
    assert status["lastState"]["reason"] == "Completed" and status["lastState"]["exitCode"] == 0
    assert condition(status, "Ready")["status"] == "False"
    assert (await world.reasons("a"))[-1] == "Completed"
    assert result == Result()


async def test_on_failure_exit_1_is_restarted(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude", "restartPolicy": "OnFailure"})
    world.clock.advance(3)
    world.runtime.exit(instance.id, 1)
    await world.reconcile("a")
    assert world.runtime.mutations() == [("start", instance.id)]
    status = await world.status("a")
    assert status["phase"] == "Running" and status["restartCount"] == 1


@pytest.mark.parametrize(("code", "phase", "reason"), [(0, "Succeeded", "Completed"), (3, "Failed", "Error")])
async def test_never_policy_ends_in_its_phase_and_is_never_restarted(
    world: World, code: int, phase: str, reason: str
) -> None:
    instance = await world.running({"name": "a", "type": "claude", "restartPolicy": "Never"})
    world.clock.advance(3)
    world.runtime.exit(instance.id, code)
    await world.reconcile("a")
    world.clock.advance(400)
    await world.reconcile("a")
    assert world.runtime.mutations() == []
    status = await world.status("a")
    assert status["phase"] == phase and status["restartCount"] == 0
    assert status["lastState"] == {
        "exitCode": code,
        "reason": reason,
        "startedAt": instance.started_at,
        "finishedAt": world.runtime.instances_by_id[instance.id].finished_at,
    }
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == reason
    assert "restartPolicy is Never" in ready["message"]


# -- errors ------------------------------------------------------------------------------------------


async def test_oom_kill_is_resource_limit_with_oomkilled_last_state_until_the_limit_changes(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude", "resources": {"memory": "256m"}})
    world.clock.advance(2)
    world.runtime.exit(instance.id, 137, oom_killed=True)
    await world.reconcile("a")

    assert world.runtime.mutations() == [("start", instance.id)]  # Always: restarted
    status = await world.status("a")
    assert status["lastState"]["reason"] == "OOMKilled" and status["lastState"]["exitCode"] == 137
    assert status["error"]["code"] == RESOURCE_LIMIT
    assert "OOM-killed at its memory limit of 256m (268435456 bytes)" in status["error"]["message"]
    assert "OOMKilled" in await world.reasons("a")
    world.clock.advance(30)
    await world.reconcile("a")  # running again does not hide why it was restarted
    assert (await world.status("a"))["error"]["code"] == RESOURCE_LIMIT

    await world.replace({"name": "a", "type": "claude", "resources": {"memory": "1g"}})
    await world.reconcile("a")
    status = await world.status("a")
    assert status["phase"] == "Running" and "error" not in status and "lastState" not in status
    assert condition(status, "Ready")["status"] == "True"


async def test_oom_kill_with_never_policy_is_failed_with_resource_limit(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude", "restartPolicy": "Never"})
    world.runtime.exit(instance.id, 137, oom_killed=True)
    await world.reconcile("a")
    status = await world.status("a")
    assert status["phase"] == "Failed" and status["error"]["code"] == RESOURCE_LIMIT
    assert status["lastState"]["reason"] == "OOMKilled"
    assert world.runtime.mutations() == []


async def test_missing_image_is_image_not_found_then_starts_when_it_appears(world: World) -> None:
    world.runtime.remove_image(IMAGE)
    await world.create({"name": "a", "type": "claude"})
    with pytest.raises(AgentError) as raised:
        await world.reconcile("a")

    assert raised.value.code == IMAGE_NOT_FOUND
    assert world.runtime.mutations() == [] and world.runtime.held("a") == []
    assert world.runtime.workspaces == {}
    status = await world.status("a")
    assert status["phase"] == "Pending"
    assert status["error"]["code"] == IMAGE_NOT_FOUND and IMAGE in status["error"]["message"]
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == IMAGE_NOT_FOUND
    assert await world.reasons("a") == [IMAGE_NOT_FOUND]

    world.runtime.add_image(IMAGE)
    world.clock.advance(5)
    await world.reconcile("a")
    status = await world.status("a")
    assert status["phase"] == "Running" and "error" not in status
    assert [v for v, _ in world.runtime.mutations()] == ["create", "start"]


async def test_custom_image_is_the_one_checked(world: World) -> None:
    await world.create({"name": "a", "type": "custom", "image": "example.org/tools:1"})
    with pytest.raises(AgentError, match=r"example\.org/tools:1"):
        await world.reconcile("a")
    world.runtime.add_image("example.org/tools:1")
    await world.reconcile("a")
    assert world.runtime.held("a")[0].image == "example.org/tools:1"


async def test_network_that_cannot_be_made_is_network_error(world: World) -> None:
    await world.create({"name": "a", "type": "claude"})
    world.runtime.fail_next("ensure_network", AgentError(NETWORK_ERROR, "could not create network parallax-agents"))
    with pytest.raises(AgentError):
        await world.reconcile("a")
    status = await world.status("a")
    assert status["error"]["code"] == NETWORK_ERROR
    assert world.runtime.mutations() == []
    await world.reconcile("a")
    assert (await world.status("a"))["phase"] == "Running"


async def test_unreachable_runtime_is_socket_error_then_everything_comes_back(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    await world.create({"name": "b", "type": "claude"})  # created while the runtime is down
    world.runtime.set_reachable(False)
    for name in ("a", "b"):
        with pytest.raises(AgentError) as raised:
            await world.reconcile(name)
        assert raised.value.code == SOCKET_ERROR
        status = await world.status(name)
        assert status["error"]["code"] == SOCKET_ERROR
        assert condition(status, "Ready") | {"lastTransitionTime": None} == {
            "type": "Ready",
            "status": "False",
            "reason": SOCKET_ERROR,
            "message": status["error"]["message"],
            "lastTransitionTime": None,
        }
        assert SOCKET_ERROR in await world.reasons(name)
    assert world.runtime.mutations() == []
    assert (await world.status("a"))["phase"] == "Running"  # what was last seen; nothing is deleted

    world.runtime.set_reachable(True)
    world.clock.advance(30)
    for name in ("a", "b"):
        await world.reconcile(name)
        status = await world.status(name)
        assert status["phase"] == "Running" and "error" not in status
        assert condition(status, "Ready")["status"] == "True"
    assert world.runtime.held("a")[0].id == instance.id  # the running one was not restarted
    assert [v for v, _ in world.runtime.mutations()] == ["create", "start"]  # b's


async def test_a_failed_operation_writes_its_error_once_and_raises(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.clock.advance(20)
    world.runtime.exit(instance.id, 1)
    world.runtime.fail_next("start", AgentError(CONTAINER_ERROR, "the engine refused to start it"))
    changes = world.store.subscribe()
    events = len(await world.store.list_events("a"))

    with pytest.raises(AgentError) as raised:
        await world.reconcile("a")

    assert raised.value.code == CONTAINER_ERROR
    writes = [changes.get_nowait() for _ in range(changes.qsize())]
    assert [(w.type, w.agent.name, w.spec_changed) for w in writes] == [("MODIFIED", "a", False)]
    status = writes[0].agent.status
    assert status == await world.status("a")
    assert status["error"]["code"] == CONTAINER_ERROR
    assert status["restartCount"] == 0  # the restart did not happen
    reasons = [e.reason for e in (await world.store.list_events("a"))[events:]]
    assert reasons == ["Exited", CONTAINER_ERROR]

    await world.reconcile("a")  # the work queue's retry
    status = await world.status("a")
    assert status["phase"] == "Running" and status["restartCount"] == 1 and "error" not in status


async def test_instance_the_runtime_refuses_to_start_for_ten_seconds_is_replaced_and_counted_as_a_restart(
    world: World,
) -> None:
    instance = await world.running({"name": "a", "type": "claude", "env": {"TOKEN": "s3cret-value"}})
    world.clock.advance(20)
    world.runtime.exit(instance.id, 1)
    for _ in range(3):  # e.g. Docker's "network … not found" after the network was made again
        world.runtime.fail_next("start", AgentError(NETWORK_ERROR, "network 1369e57e not found (s3cret-value)"))
        with pytest.raises(AgentError):
            await world.reconcile("a")
        world.clock.advance(4)
        # refusals within ten seconds may be passing (a daemon shutting down): the instance is kept
        assert world.runtime.held("a")[0].id == instance.id
    failures = (await world.status("a"))["startFailures"]
    assert failures["containerId"] == instance.id and failures["count"] == 3
    assert "s3cret-value" not in failures["message"]
    assert [c.verb for c in world.runtime.calls if c.verb == "start"] == ["start", "start", "start"]

    await world.reconcile("a")  # twelve seconds after the first refusal

    (replacement,) = world.runtime.held("a")
    assert replacement.id != instance.id
    assert [v for v, _ in world.runtime.mutations()][-3:] == ["remove", "create", "start"]
    status = await world.status("a")
    assert status["phase"] == "Running" and status["containerId"] == replacement.id
    assert status["restartCount"] == 1 and "startFailures" not in status and "error" not in status
    events = await world.store.list_events("a")
    replaced = next(e for e in events if e.reason == "Replaced")
    assert instance.id[:12] in replaced.message and "3 attempts" in replaced.message
    assert all("s3cret-value" not in e.message for e in events)


async def test_unreachable_runtime_during_a_start_does_not_count_towards_replacing(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.clock.advance(20)
    world.runtime.exit(instance.id, 1)
    for _ in range(3):
        world.runtime.fail_next("start", AgentError(SOCKET_ERROR, "cannot reach the Docker daemon"))
        with pytest.raises(AgentError):
            await world.reconcile("a")
    assert "startFailures" not in await world.status("a")

    await world.reconcile("a")

    assert world.runtime.held("a")[0].id == instance.id
    assert (await world.status("a"))["phase"] == "Running"


async def test_a_start_that_succeeds_after_one_refusal_forgets_the_refusal(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.clock.advance(20)
    world.runtime.exit(instance.id, 1)
    world.runtime.fail_next("start", AgentError(CONTAINER_ERROR, "refused once"))
    with pytest.raises(AgentError):
        await world.reconcile("a")
    await world.reconcile("a")
    assert "startFailures" not in await world.status("a")
    world.clock.advance(20)
    world.runtime.exit(instance.id, 1)
    world.clock.advance(11)  # past the back-off of a second exit
    world.runtime.fail_next("start", AgentError(CONTAINER_ERROR, "refused once more"))
    with pytest.raises(AgentError):
        await world.reconcile("a")
    await world.reconcile("a")  # one refusal after a success is a first one again: no replacement
    assert world.runtime.held("a")[0].id == instance.id


async def test_mount_that_became_a_link_out_of_its_root_is_refused_before_the_restart(world: World) -> None:
    project = Path(world.settings.store_path).parent / "volumes" / "project"
    project.mkdir(parents=True)
    instance = await world.running({"name": "a", "type": "claude", "volumes": [f"{project}:/project:ro"]})
    project.rmdir()
    project.symlink_to("/etc")  # after admission, behind our back
    world.clock.advance(20)
    world.runtime.exit(instance.id, 1)

    with pytest.raises(AgentError) as raised:
        await world.reconcile("a")

    assert raised.value.code == CONTAINER_ERROR and "volumes[0]" in raised.value.message
    assert world.runtime.mutations() == []
    status = await world.status("a")
    assert status["error"]["code"] == CONTAINER_ERROR and status["restartCount"] == 0


async def test_foreign_workspace_volume_is_not_mounted(world: World) -> None:
    agent = await world.create({"name": "a", "type": "claude"})
    world.runtime.add_foreign_workspace(agent)
    with pytest.raises(AgentError):
        await world.reconcile("a")
    assert (await world.status("a"))["error"]["code"] == CONTAINER_ERROR
    assert world.runtime.held("a") == []


# -- changes behind our back -------------------------------------------------------------------------


async def test_network_removed_behind_our_back_is_made_again_and_rejoined(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    old_network = world.runtime.networks[NETWORK].id
    world.runtime.drop_network(NETWORK)

    await world.reconcile("a")

    assert world.runtime.networks[NETWORK].managed and world.runtime.networks[NETWORK].id != old_network
    assert Call("ensure_network", NETWORK) in world.runtime.calls
    assert world.runtime.mutations() == [("connect", instance.id)]
    assert instance.networks == [NETWORK] and instance.aliases == {NETWORK: ["a"]}
    assert (await world.reasons("a"))[-1] == "Reconnected"
    assert (await world.status("a"))["phase"] == "Running"


async def test_instance_left_in_created_state_is_started(world: World) -> None:
    agent = await world.create({"name": "a", "type": "claude"})
    desired = world.runtime.render(agent)
    # A controller killed between create and start left this one.
    left = world.runtime.add_instance("a", agent.metadata.uid, config_hash=desired.config_hash, state="created")

    await world.reconcile("a")

    assert world.runtime.mutations() == [("start", left)]
    status = await world.status("a")
    assert status["phase"] == "Running" and status["containerId"] == left
    assert await world.reasons("a") == ["Started"]


async def test_stopped_instance_is_started_again(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.clock.advance(60)
    await world.runtime.stop(instance.id, 10)  # docker stop, behind our back
    world.runtime.reset_calls()
    await world.reconcile("a")
    assert world.runtime.mutations() == [("start", instance.id)]
    assert (await world.status("a"))["phase"] == "Running"


async def test_removed_instance_is_created_again(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    await world.runtime.remove(instance.id)  # docker rm -f, behind our back
    world.runtime.reset_calls()
    await world.reconcile("a")
    (new,) = world.runtime.held("a")
    assert [v for v, _ in world.runtime.mutations()] == ["create", "start"]
    assert (await world.status("a"))["containerId"] == new.id


async def test_renamed_instance_is_renamed_back(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.runtime.rename_instance(instance.id, "someone-elses-name")

    await world.reconcile("a")

    assert world.runtime.mutations() == [("rename", instance.id)]
    assert instance.name == "parallax-agent-a" and instance.state == "running"
    renamed = (await world.store.list_events("a"))[-1]
    assert (renamed.reason, renamed.message) == (
        "Renamed",
        "container had been renamed to someone-elses-name; renamed back",
    )


async def test_disconnected_instance_is_reconnected_with_its_alias(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.runtime.disconnect_instance(instance.id, NETWORK)

    await world.reconcile("a")

    assert world.runtime.mutations() == [("connect", instance.id)]
    assert instance.networks == [NETWORK] and instance.aliases == {NETWORK: ["a"]}
    assert (await world.reasons("a"))[-1] == "Reconnected"


async def test_stranger_holding_the_name_is_removed_and_our_instance_created(world: World) -> None:
    stranger = world.runtime.add_stranger("a")  # labels claim agent "a", another uid, our instance's name
    agent = await world.create({"name": "a", "type": "claude"})

    await world.reconcile("a")

    (own,) = world.runtime.held("a")
    assert own.id != stranger and own.uid == agent.metadata.uid and own.name == "parallax-agent-a"
    assert world.runtime.mutations() == [("remove", stranger), ("create", "a"), ("start", own.id)]
    assert stops(world.runtime) == []  # a stranger gets no grace
    assert world.collected == ["container"]
    assert await world.reasons("a") == ["ForeignContainerRemoved", "Created", "Started"]
    assert (await world.status("a"))["phase"] == "Running"


async def test_forged_uid_alongside_our_instance_is_removed_and_ours_kept(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    forged = world.runtime.add_stranger("a", uid="forged-uid", name="pxtest-forged-a")

    await world.reconcile("a")

    assert world.runtime.mutations() == [("remove", forged)]
    assert [i.id for i in world.runtime.held("a")] == [instance.id] and instance.state == "running"
    assert world.collected == ["container"]
    assert (await world.reasons("a"))[-1] == "ForeignContainerRemoved"
    assert (await world.status("a"))["containerId"] == instance.id


async def test_duplicate_own_instance_is_removed_keeping_the_properly_named_one(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    agent = await world.get("a")
    duplicate = world.runtime.add_instance(
        "a", agent.metadata.uid, name="parallax-agent-a-copy", config_hash=instance.config_hash
    )

    await world.reconcile("a")

    assert world.runtime.mutations() == [("remove", duplicate)]
    assert [i.id for i in world.runtime.held("a")] == [instance.id]
    assert world.collected == ["container"]


# -- suspend, delete, garbage collection -------------------------------------------------------------


async def test_suspend_stops_with_the_grace_period_and_resume_starts_it_again(world: World) -> None:
    body = {"name": "a", "type": "claude", "stopGracePeriodSeconds": 5}
    instance = await world.running(body)
    world.clock.advance(30)

    await world.replace({**body, "suspend": True})
    await world.reconcile("a")

    assert world.runtime.mutations() == [("stop", instance.id)]
    assert stops(world.runtime)[0].grace_seconds == 5
    assert instance.state == "exited" and world.runtime.held("a") == [instance]  # stopped, kept
    status = await world.status("a")
    assert status["phase"] == "Suspended" and status["containerId"] == instance.id
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Suspended"
    world.runtime.reset_calls()
    await world.reconcile("a")
    assert world.runtime.mutations() == []  # it stays stopped

    world.clock.advance(30)
    await world.replace(body)
    await world.reconcile("a")

    assert world.runtime.mutations() == [("start", instance.id)]  # the same instance, not a new one
    status = await world.status("a")
    assert status["phase"] == "Running" and status["containerId"] == instance.id


async def test_suspended_before_it_ever_ran_creates_nothing(world: World) -> None:
    await world.create({"name": "a", "type": "claude", "suspend": True})
    await world.reconcile("a")
    assert world.runtime.mutations() == [] and world.runtime.held("a") == []
    status = await world.status("a")
    assert status["phase"] == "Suspended" and status["containerId"] is None


async def test_resume_with_restart_policy_never_starts_it_again(world: World) -> None:
    body = {"name": "a", "type": "claude", "restartPolicy": "Never"}
    instance = await world.running(body)
    await world.replace({**body, "suspend": True})
    await world.reconcile("a")
    await world.replace(body)
    await world.reconcile("a")
    assert world.runtime.mutations()[-1] == ("start", instance.id)
    assert (await world.status("a"))["phase"] == "Running"
    assert (await world.status("a")).get("restartCount", 0) == 0, "the stop for suspend is not a restart"


@pytest.mark.parametrize("keep", [False, True])
async def test_delete_stops_with_the_grace_period_removes_and_purges(world: World, keep: bool) -> None:
    body = {"name": "a", "type": "claude", "stopGracePeriodSeconds": 3, "workspace": {"keep": keep}}
    instance = await world.running(body)
    agent = await world.get("a")
    await world.store.mark_deleted("a")
    assert (await world.status("a"))["phase"] == "Terminating"

    result = await world.reconcile("a")

    expected = [("stop", instance.id), ("remove", instance.id)]
    if not keep:
        expected.append(("remove_workspace", "parallax-workspace-a"))
    assert world.runtime.mutations() == expected
    assert stops(world.runtime)[0].grace_seconds == 3 and instance.stop_grace_seconds == [3]
    assert world.runtime.held("a") == []
    assert world.runtime.workspaces == ({"parallax-workspace-a": "a"} if keep else {})
    with pytest.raises(NotFound):
        await world.get("a")
    deleted = (await world.store.list_events("a", agent.metadata.uid))[-1]
    assert (deleted.reason, deleted.message) == ("Deleted", "container stopped and removed; record purged")
    assert result == Result()
    assert world.collected == []


async def test_delete_of_an_exited_instance_removes_it_without_stopping(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude", "restartPolicy": "Never"})
    world.runtime.exit(instance.id, 0)
    await world.reconcile("a")
    await world.store.mark_deleted("a")
    world.runtime.reset_calls()
    await world.reconcile("a")
    assert world.runtime.mutations() == [("remove", instance.id), ("remove_workspace", "parallax-workspace-a")]


async def test_orphan_instance_without_a_record_is_stopped_removed_and_counted(world: World) -> None:
    orphan = world.runtime.add_orphan("ghost")
    exited = world.runtime.add_orphan("ghost", state="exited")

    result = await world.reconcile("ghost")

    assert world.runtime.mutations() == [("stop", orphan), ("remove", orphan), ("remove", exited)]
    assert stops(world.runtime)[0].grace_seconds == 10
    assert world.runtime.held("ghost") == []
    assert world.collected == ["container", "container"]
    assert result == Result()
    assert await world.store.list_events("ghost") == []


async def test_nothing_to_do_for_a_name_with_neither_record_nor_instance(world: World) -> None:
    assert await world.reconcile("nobody") == Result()
    assert world.runtime.verbs() == ["instances"]


# -- the credentials check ---------------------------------------------------------------------------


async def test_instance_saying_it_needs_credentials_is_running_but_not_ready(world: World) -> None:
    world.runtime.print_on_start(IMAGE, "starting", CREDENTIALS_LINE)
    await world.create({"name": "a", "type": "claude"})

    result = await world.reconcile("a")

    status = await world.status("a")
    assert status["phase"] == "Running"
    ready = condition(status, "Ready")
    message = "needs credentials: ANTHROPIC_API_KEY is not set"
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "NeedsCredentials", message)
    credentials = condition(status, "CredentialsReady")
    assert (credentials["status"], credentials["reason"]) == ("False", "NeedsCredentials")
    assert await world.reasons("a") == ["Created", "Started", "NeedsCredentials"]
    assert result.requeue_after is None

    world.runtime.reset_calls()
    world.clock.advance(30)
    await world.reconcile("a")  # known for this instance: not read again, not reported again
    assert "recent_output" not in world.runtime.verbs()
    assert condition(await world.status("a"), "Ready")["reason"] == "NeedsCredentials"
    assert await world.reasons("a") == ["Created", "Started", "NeedsCredentials"]


async def test_credentials_line_printed_a_moment_after_start_is_seen_on_the_recheck(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    assert condition(await world.status("a"), "Ready")["status"] == "True"
    world.runtime.write_output(instance.id, CREDENTIALS_LINE)
    world.clock.advance(3)
    await world.reconcile("a")
    assert condition(await world.status("a"), "Ready")["reason"] == "NeedsCredentials"


async def test_quiet_instance_is_no_longer_checked_after_its_first_seconds(world: World) -> None:
    instance = await world.running({"name": "a", "type": "claude"})
    world.clock.advance(13)
    world.runtime.write_output(instance.id, CREDENTIALS_LINE)  # too late to be the image's start-up word
    result = await world.reconcile("a")
    assert "recent_output" not in world.runtime.verbs()
    assert condition(await world.status("a"), "Ready")["status"] == "True"
    assert result == Result()


async def test_policy_changed_to_always_after_the_agent_ended_restarts_it(world: World) -> None:
    body = {"name": "a", "type": "claude", "restartPolicy": "Never"}
    instance = await world.running(body)
    world.runtime.exit(instance.id, 3)
    await world.reconcile("a")
    assert (await world.status("a"))["phase"] == "Failed"

    await world.replace({**body, "restartPolicy": "Always"})
    await world.reconcile("a")

    assert world.runtime.mutations() == [("start", instance.id)]  # the same instance: the policy is not in it
    status = await world.status("a")
    assert status["phase"] == "Running" and status["restartCount"] == 1


# -- the fake itself -----------------------------------------------------------------------------------


def test_fake_render_is_deterministic_and_hashes_what_goes_into_the_instance(tmp_path: Path) -> None:
    settings = Settings(store_path=str(tmp_path / "agents.db"))
    runtime = FakeRuntime(FakeClock(), settings)

    def rendered(body: dict[str, Any], uid: str = "u1", restarted_at: str | None = None) -> str:
        agent = admit(body, settings)[0]
        agent.metadata.uid = uid
        if restarted_at:
            agent.metadata.annotations["parallax.ai/restartedAt"] = restarted_at
        return runtime.render(agent).config_hash

    base = {"name": "a", "type": "claude"}
    assert rendered(base) == rendered(dict(base))
    changed = [
        rendered({**base, "env": {"K": "v"}}),
        rendered({**base, "env": {"K": "w"}}),  # a secret's value counts, though it is never shown
        rendered({**base, "resources": {"memory": "1g"}}),
        rendered({**base, "image": "example.org/x:1"}),
        rendered({**base, "type": "codex"}),
        rendered({**base, "network": "other"}),
        rendered(base, uid="u2"),
        rendered(base, restarted_at="2026-01-01T00:00:00Z"),
    ]
    assert len({rendered(base), *changed}) == len(changed) + 1
    for controller_only in ({"suspend": True}, {"restartPolicy": "Never"}, {"stopGracePeriodSeconds": 1}):
        assert rendered({**base, **controller_only}) == rendered(base)
    assert runtime.render(admit(base, settings)[0]).image == "parallax/agent-claude:latest"


async def test_fake_times_changes_stream_and_unreachability() -> None:
    clock = FakeClock(start=10.5)
    runtime = FakeRuntime(clock)
    assert runtime.timestamp() == "2026-01-01T00:00:10.500000000Z"
    assert runtime.wall_time().isoformat() == "2026-01-01T00:00:10.500000+00:00"
    stream = runtime.changes()
    instance = runtime.add_orphan("x")
    assert await asyncio.wait_for(anext(stream), 1) == RuntimeChange("instance", agent="x")
    runtime.disconnect_instance(instance)
    assert await asyncio.wait_for(anext(stream), 1) == RuntimeChange(
        "network-detached", instance_id=instance, network=NETWORK
    )
    runtime.set_reachable(False)
    with pytest.raises(AgentError, match=SOCKET_ERROR):
        await asyncio.wait_for(anext(stream), 1)
    with pytest.raises(AgentError, match=SOCKET_ERROR):
        await runtime.instances("x")
    runtime.set_reachable(True)
    runtime.fail_next("stop", AgentError(CONTAINER_ERROR, "refused"))
    with pytest.raises(AgentError, match="refused"):
        await runtime.stop(instance, 4)
    await runtime.stop(instance, 4)
    assert runtime.calls[-2:] == [Call("stop", instance, 4, CONTAINER_ERROR), Call("stop", instance, 4)]
    assert runtime.instances_by_id[instance].stop_grace_seconds == [4]
