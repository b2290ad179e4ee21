"""``spec.lifecycle`` and ``spec.paused`` through the reconciler, on the fake runtime and a fake clock.

Deadlines are times on the stored status (``activeSince``, ``lastActivityTime``, ``finishedAt``), so each
test moves the clock, reconciles, and asserts what a user would see: the phase and reason, the events,
what the runtime was asked, when the agent is requeued, and whether the record is still there. A "new
controller" is a fresh ``Reconciler`` on the same store: nothing in memory carries a timer over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from api.server.activity import note_activity
from api.server.errors import ApiError
from api.server.state import SETTINGS, STORE
from controller.admission.admit import AdmissionError, admit, spec_defaults
from controller.config import Settings
from controller.model.clock import FakeClock
from controller.reconcile.decide import iso, plan
from controller.reconcile.reconciler import Reconciler
from controller.runtime.docker.render import workspace_volume
from controller.runtime.fake import FakeRuntime
from controller.store.interface import NotFound
from controller.store.sqlite import SqliteStore


class World:
    def __init__(self, settings: Settings, store: SqliteStore) -> None:
        self.settings, self.store = settings, store
        self.clock = FakeClock(start=1000.0)
        self.runtime = FakeRuntime(self.clock, settings)
        self.controller = self.new_controller()

    def new_controller(self) -> Reconciler:
        """A controller started afresh (a restart, or a new leader): only the store carries over."""
        self.controller = Reconciler(self.store, self.runtime, self.settings, now=self.runtime.wall_time)
        return self.controller

    async def reconcile(self, name: str = "a") -> float | None:
        return (await self.controller.reconcile(name)).requeue_after

    async def running(self, body: dict[str, Any]) -> str:
        await self.store.create(admit(body, self.settings)[0])
        await self.reconcile(body["name"])
        assert (await self.status(body["name"]))["phase"] == "Running"
        (instance,) = self.runtime.held(body["name"])
        self.runtime.reset_calls()
        return instance.id

    async def replace(self, body: dict[str, Any]) -> None:
        await self.store.replace(admit(body, self.settings)[0])

    async def status(self, name: str = "a") -> dict[str, Any]:
        return (await self.store.get(name)).status

    async def reasons(self, name: str = "a") -> list[str]:
        return [e.reason for e in await self.store.list_events(name)]

    async def activity(self, name: str = "a") -> None:
        """What the API records for a send, exec, file transfer, followed log or keepalive."""
        await self.store.record_activity(name, iso(self.runtime.wall_time()))

    def acted(self) -> list[str]:
        """The runtime verbs that changed something, in order."""
        return [verb for verb, _ in self.runtime.mutations()]

    async def gone(self, name: str = "a") -> bool:
        try:
            await self.store.get(name)
        except NotFound:
            return True
        return False


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    # Activity written at once (no throttle): the timers' arithmetic without the throttle's grace.
    settings = Settings(store_path=str(tmp_path / "agents.db"), activity_write_seconds=0)
    store = SqliteStore(settings.store_path, spec_defaults(settings))
    await store.open()
    try:
        yield World(settings, store)
    finally:
        await store.close()


def agent(**lifecycle: Any) -> dict[str, Any]:
    return {"name": "a", "type": "claude", "lifecycle": lifecycle}


# -- activeDeadlineSeconds ---------------------------------------------------------------------------


async def test_a_run_past_its_deadline_is_stopped_failed_deadline_exceeded_and_not_restarted(world: World) -> None:
    await world.running(agent(activeDeadlineSeconds=60))
    world.clock.advance(59)
    requeue = await world.reconcile()
    assert (await world.status())["phase"] == "Running"
    assert requeue == pytest.approx(1.0), "requeued at the deadline, not polled"
    world.clock.advance(1)
    await world.reconcile()
    status = await world.status()
    assert status["phase"] == "Failed" and status["reason"] == "DeadlineExceeded"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "DeadlineExceeded"
    assert "DeadlineExceeded" in await world.reasons()
    assert world.acted() == ["stop"]
    world.runtime.reset_calls()
    world.clock.advance(600)
    await world.reconcile()
    assert (await world.status())["phase"] == "Failed"
    assert "start" not in world.runtime.verbs(), "restartPolicy Always does not undo the deadline"


async def test_the_deadline_survives_a_controller_restart(world: World) -> None:
    await world.running(agent(activeDeadlineSeconds=60))
    world.clock.advance(30)
    world.new_controller()
    assert await world.reconcile() == pytest.approx(30.0), "the new controller finds the deadline on the record"
    world.clock.advance(30)
    world.new_controller()
    await world.reconcile()
    assert (await world.status())["reason"] == "DeadlineExceeded"


async def test_a_crash_restart_keeps_the_runs_deadline(world: World) -> None:
    instance = await world.running(agent(activeDeadlineSeconds=60))
    world.clock.advance(40)
    world.runtime.exit(instance, 1)
    await world.reconcile()  # restarted at once (the first restart is immediate)
    assert (await world.status())["phase"] == "Running"
    world.clock.advance(13)  # past the credentials check of a fresh start (requeued every 3 s meanwhile)
    assert await world.reconcile() == pytest.approx(7.0), "the deadline counts from the run's first start"


async def test_a_crash_looping_agent_past_its_deadline_is_failed_without_another_start(world: World) -> None:
    instance = await world.running(agent(activeDeadlineSeconds=30))
    world.clock.advance(20)
    world.runtime.exit(instance, 1)
    await world.reconcile()  # the first restart is immediate
    world.clock.advance(1)
    world.runtime.exit(instance, 1)
    await world.reconcile()
    assert (await world.status())["phase"] == "CrashLoopBackOff"  # back-off 10 s: restart at 31
    world.runtime.reset_calls()
    world.clock.advance(10)
    await world.reconcile()
    status = await world.status()
    assert status["phase"] == "Failed" and status["reason"] == "DeadlineExceeded"
    assert "start" not in world.acted()
    assert "DeadlineExceeded" in await world.reasons()


async def test_a_new_spec_after_the_deadline_starts_a_new_run(world: World) -> None:
    await world.running(agent(activeDeadlineSeconds=10))
    world.clock.advance(10)
    await world.reconcile()
    assert (await world.status())["phase"] == "Failed"
    await world.replace(agent(activeDeadlineSeconds=100))
    await world.reconcile()
    status = await world.status()
    assert status["phase"] == "Running" and "reason" not in status
    world.clock.advance(13)
    assert await world.reconcile() == pytest.approx(87.0), "a deadline of its own, from the new start"


# -- idleTimeoutSeconds -------------------------------------------------------------------------------


async def test_an_idle_agent_is_suspended_with_its_workspace_kept_and_activity_postpones_it(world: World) -> None:
    await world.running(agent(idleTimeoutSeconds=100))
    generation = (await world.store.get("a")).metadata.generation
    world.clock.advance(60)
    await world.activity()
    world.clock.advance(60)
    assert await world.reconcile() == pytest.approx(40.0), "idle 100 s after the last activity, not the start"
    assert (await world.status())["phase"] == "Running"
    world.clock.advance(40)
    await world.reconcile()
    record = await world.store.get("a")
    assert record.spec.suspend is True and record.status["phase"] == "Suspended"
    assert record.metadata.generation == generation + 1
    assert "IdleSuspended" in await world.reasons()
    assert "stop" in world.runtime.verbs()
    assert workspace_volume("a") in world.runtime.workspaces, "the workspace is kept for the resume"


async def test_activity_writes_are_status_writes_no_new_generation_and_a_stale_status_write_keeps_them(
    world: World,
) -> None:
    await world.running(agent(idleTimeoutSeconds=100))
    before = await world.store.get("a")
    world.clock.advance(5)
    await world.activity()
    after = await world.store.get("a")
    assert after.metadata.generation == before.metadata.generation
    assert after.status["lastActivityTime"] == iso(world.runtime.wall_time())
    # the controller writes a status built from its earlier read: the activity stays
    await world.store.update_status("a", before.metadata.uid, before.status)
    assert (await world.status())["lastActivityTime"] == after.status["lastActivityTime"]


async def test_idle_is_never_decided_before_a_throttled_activity_could_have_been_written(world: World) -> None:
    world.settings = Settings(store_path=world.settings.store_path, activity_write_seconds=5)
    world.new_controller()
    await world.running(agent(idleTimeoutSeconds=30))
    world.clock.advance(20)
    await world.activity()  # the API writes at most every 5 s: this may be up to 5 s late
    world.clock.advance(30)
    assert await world.reconcile() == pytest.approx(5.0)
    assert (await world.status())["phase"] == "Running"
    world.clock.advance(5)
    await world.reconcile()
    assert (await world.status())["phase"] == "Suspended"


async def test_the_idle_timer_survives_a_controller_restart(world: World) -> None:
    await world.running(agent(idleTimeoutSeconds=50))
    world.clock.advance(20)
    await world.activity()
    world.new_controller()
    assert await world.reconcile() == pytest.approx(50.0)
    world.clock.advance(50)
    world.new_controller()
    await world.reconcile()
    assert (await world.status())["phase"] == "Suspended"


async def test_on_idle_delete_deletes_the_agent(world: World) -> None:
    await world.running(agent(idleTimeoutSeconds=30, onIdle="Delete"))
    world.clock.advance(30)
    await world.reconcile()
    assert await world.gone()
    assert "IdleDeleted" in await world.reasons()
    assert world.runtime.held("a") == []


async def test_activity_noted_while_the_reconciler_decides_stops_the_suspension(world: World) -> None:
    await world.running(agent(idleTimeoutSeconds=30))
    world.clock.advance(30)
    stale = world.controller.store.get

    async def get_then_activity(name: str) -> Any:
        record = await stale(name)
        await world.activity(name)  # a send lands just after the reconcile read the record
        return record

    world.controller.store.get = get_then_activity  # type: ignore[method-assign]
    await world.reconcile()
    world.controller.store.get = stale  # type: ignore[method-assign]
    record = await world.store.get("a")
    assert record.spec.suspend is False and record.status["phase"] == "Running"
    assert "IdleSuspended" not in await world.reasons()


# -- ttlSecondsAfterFinished -----------------------------------------------------------------------


async def test_a_finished_agent_is_deleted_after_its_ttl(world: World) -> None:
    instance = await world.running({**agent(ttlSecondsAfterFinished=30), "restartPolicy": "Never"})
    world.clock.advance(5)
    world.runtime.exit(instance, 0)
    assert await world.reconcile() == pytest.approx(30.0)
    assert (await world.status())["phase"] == "Succeeded"
    world.clock.advance(29)
    world.new_controller()
    assert await world.reconcile() == pytest.approx(1.0)
    world.clock.advance(1)
    await world.reconcile()
    assert await world.gone()
    assert "TTLExpired" in await world.reasons()


async def test_the_ttl_counts_from_the_end_a_deadline_made(world: World) -> None:
    await world.running(agent(activeDeadlineSeconds=10, ttlSecondsAfterFinished=5))
    world.clock.advance(10)
    await world.reconcile()
    assert (await world.status())["phase"] == "Failed"
    assert await world.reconcile() == pytest.approx(5.0)
    world.clock.advance(5)
    await world.reconcile()
    assert await world.gone()


async def test_dry_run_plans_the_idle_suspension(world: World) -> None:
    await world.running(agent(idleTimeoutSeconds=10))
    world.clock.advance(10)
    record = await world.store.get("a")
    desired = world.runtime.render(record)
    kinds = [
        op.kind for op in plan("a", record, await world.runtime.instances("a"), desired, world.runtime.wall_time())
    ]
    assert kinds == ["suspend", "stop"]


# -- spec.paused -------------------------------------------------------------------------------------


async def test_paused_freezes_and_thaws_and_is_neither_crashed_nor_restarted(world: World) -> None:
    instance = await world.running(agent())
    await world.replace({**agent(), "paused": True})
    await world.reconcile()
    assert world.acted() == ["pause"]
    assert world.runtime.held("a")[0].state == "paused"
    status = await world.status()
    assert status["phase"] == "Paused" and status["containerId"] == instance
    world.runtime.reset_calls()
    world.clock.advance(600)
    await world.reconcile()
    assert world.runtime.mutations() == [], "a paused agent is left frozen"
    await world.replace({**agent(), "paused": False})
    await world.reconcile()
    assert world.acted() == ["unpause"]
    assert (await world.status())["phase"] == "Running"
    assert (await world.status()).get("restartCount", 0) == 0
    assert {"Paused", "Unpaused"} <= set(await world.reasons())


async def test_a_paused_agent_does_not_idle_and_thawing_counts_as_activity(world: World) -> None:
    await world.running(agent(idleTimeoutSeconds=10))
    await world.replace({**agent(idleTimeoutSeconds=10), "paused": True})
    await world.reconcile()
    world.clock.advance(100)
    assert await world.reconcile() is None, "no idle timer while paused"
    assert (await world.status())["phase"] == "Paused"
    await world.replace({**agent(idleTimeoutSeconds=10), "paused": False})
    await world.reconcile()
    assert await world.reconcile() == pytest.approx(10.0), "the idle timer starts again at the thaw"
    world.clock.advance(10)
    await world.reconcile()
    assert (await world.status())["phase"] == "Suspended"


async def test_suspending_or_deleting_a_paused_agent_thaws_it_first_to_stop_it_gracefully(world: World) -> None:
    await world.running(agent())
    await world.replace({**agent(), "paused": True})
    await world.reconcile()
    world.runtime.reset_calls()
    await world.replace({**agent(), "paused": True, "suspend": True})
    await world.reconcile()
    assert world.acted()[:2] == ["unpause", "stop"]
    assert (await world.status())["phase"] == "Suspended"


async def test_the_deadline_runs_while_paused(world: World) -> None:
    await world.running(agent(activeDeadlineSeconds=20))
    await world.replace({**agent(activeDeadlineSeconds=20), "paused": True})
    await world.reconcile()
    world.clock.advance(20)
    world.runtime.reset_calls()
    await world.reconcile()
    assert world.acted()[:2] == ["unpause", "stop"]
    assert (await world.status())["reason"] == "DeadlineExceeded"


# -- admission -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifecycle", "field"),
    [
        ({"activeDeadlineSeconds": -1}, "lifecycle.activeDeadlineSeconds"),
        ({"activeDeadlineSeconds": 0}, "lifecycle.activeDeadlineSeconds"),
        ({"idleTimeoutSeconds": 1.5}, "lifecycle.idleTimeoutSeconds"),
        ({"ttlSecondsAfterFinished": -5}, "lifecycle.ttlSecondsAfterFinished"),
        ({"onIdle": "Suspend"}, "lifecycle.onIdle"),
        ({"idleTimeoutSeconds": 5, "onIdle": "Stop"}, "lifecycle.onIdle"),
        ({"resumeOnActivity": "yes"}, "lifecycle.resumeOnActivity"),
        ({"idle": 5}, "lifecycle.idle"),
    ],
)
def test_bad_lifecycle_fields_are_refused_naming_the_field(
    tmp_path: Path, lifecycle: dict[str, Any], field: str
) -> None:
    settings = Settings(store_path=str(tmp_path / "agents.db"))
    with pytest.raises(AdmissionError) as refused:
        admit(agent(**lifecycle), settings)
    assert not refused.value.forbidden
    assert field in [e.field for e in refused.value.errors]


def test_paused_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(AdmissionError) as refused:
        admit({**agent(), "paused": "yes"}, Settings(store_path=str(tmp_path / "agents.db")))
    assert [e.field for e in refused.value.errors] == ["paused"]


# -- note_activity (api/server/activity.py) --------------------------------------------------------------


def app_of(world: World, **settings: Any) -> web.Application:
    app = web.Application()
    app[SETTINGS] = Settings(store_path=world.settings.store_path, **settings)
    app[STORE] = world.store
    return app


async def test_note_activity_is_written_at_most_once_per_throttle_period(world: World) -> None:
    await world.running(agent(idleTimeoutSeconds=100))
    app = app_of(world, activity_write_seconds=3600)
    await note_activity(app, "a")
    first = await world.store.get("a")
    assert first.status.get("lastActivityTime")
    for _ in range(50):  # a burst of execs, or a log stream: no write each
        await note_activity(app, "a")
    assert (await world.store.get("a")).metadata.resource_version == first.metadata.resource_version


async def test_activity_wakes_a_suspended_agent_that_asks_for_it(world: World) -> None:
    body = {**agent(idleTimeoutSeconds=10, resumeOnActivity=True), "suspend": True}
    await world.store.create(admit(body, world.settings)[0])
    await world.reconcile()
    assert (await world.status())["phase"] == "Suspended"

    async def controller() -> None:
        while True:
            await world.reconcile()
            await asyncio.sleep(0.01)

    loop = asyncio.create_task(controller())
    try:
        await asyncio.wait_for(note_activity(app_of(world), "a", wake=True), 5)
    finally:
        loop.cancel()
    record = await world.store.get("a")
    assert record.spec.suspend is False and record.status["phase"] == "Running"


async def test_a_wake_that_does_not_come_up_in_time_is_a_503_saying_why(world: World) -> None:
    body = {**agent(resumeOnActivity=True), "suspend": True}
    await world.store.create(admit(body, world.settings)[0])
    with pytest.raises(ApiError) as refused:  # no controller runs: it never comes up
        await note_activity(app_of(world, resume_wait_seconds=0.3), "a", wake=True)
    assert refused.value.status == 503 and "not running after 0.3s" in refused.value.message


async def test_without_resume_on_activity_a_suspended_agent_stays_suspended(world: World) -> None:
    await world.store.create(admit({**agent(), "suspend": True}, world.settings)[0])
    await note_activity(app_of(world), "a", wake=True)
    assert (await world.store.get("a")).spec.suspend is True
