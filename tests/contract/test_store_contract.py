"""The store contract (``controller.store.sqlite.Store``): what every store must do, whatever keeps the
records. Each test runs against every store in ``conftest.STORES``; a new store passes them unchanged.

Only the ``Store`` interface is used here. What is particular to one store (SQLite's files, lock,
group commits, a full disk) is tested beside it (``tests/unit/test_sqlite_store.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from controller.admission.admit import admit
from controller.config import Settings
from controller.model.agent import Agent
from controller.model.secret import Secret
from controller.observe.watch import Expired, WatchHub
from controller.store.interface import AgentEvent, AlreadyExists, Conflict, CutOff, NotFound, Store, Write

MakeStore = Callable[..., Awaitable[Store]]


def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "data" / "agents.db"))


def agent(body: dict, s: Settings) -> Agent:
    return admit(body, s)[0]


# -- records: generation, resourceVersion, compare-and-set, names ----------------------------------


async def test_create_sets_uid_generation_and_resource_version(store: Store, tmp_path: Path):
    created = await store.create(agent({"name": "a", "type": "claude"}, settings(tmp_path)))
    assert created.metadata.uid
    assert created.metadata.generation == 1
    assert created.metadata.resource_version >= 1
    assert created.status["phase"] == "Pending"
    with pytest.raises(AlreadyExists):
        await store.create(agent({"name": "a", "type": "codex"}, settings(tmp_path)))
    assert (await store.get("a")).spec.type == "claude"


async def test_two_names_sharing_a_container_name_are_refused(store: Store, tmp_path: Path):
    await store.create(agent({"name": "agent-7", "type": "claude"}, settings(tmp_path)))
    with pytest.raises(AlreadyExists, match="parallax-agent-7"):
        await store.create(agent({"name": "7", "type": "claude"}, settings(tmp_path)))


async def test_a_purged_name_frees_its_container_name(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    first = await store.create(agent({"name": "agent-8", "type": "claude"}, s))
    await store.mark_deleted("agent-8")
    assert await store.purge("agent-8", first.metadata.uid)
    assert (await store.create(agent({"name": "8", "type": "claude"}, s))).name == "8"


async def test_generation_moves_on_spec_change_only_and_rv_on_every_write(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    created = await store.create(agent({"name": "a", "type": "claude"}, s))
    same = await store.replace(agent({"name": "a", "type": "claude"}, s))
    assert same.metadata.resource_version == created.metadata.resource_version
    relabelled = await store.replace(agent({"name": "a", "type": "claude", "labels": {"x": "y"}}, s))
    assert relabelled.metadata.generation == 1
    assert relabelled.metadata.resource_version > created.metadata.resource_version
    changed = await store.replace(agent({"name": "a", "type": "claude", "labels": {"x": "y"}, "suspend": True}, s))
    assert changed.metadata.generation == 2
    status = await store.update_status("a", created.metadata.uid, {"phase": "Suspended"})
    assert status is not None
    assert status.metadata.generation == 2
    assert status.metadata.resource_version > changed.metadata.resource_version


async def test_stale_resource_version_is_a_conflict_and_changes_nothing(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    created = await store.create(agent({"name": "a", "type": "claude"}, s))
    await store.replace(agent({"name": "a", "type": "claude", "suspend": True}, s))
    with pytest.raises(Conflict):
        await store.replace(
            agent({"name": "a", "type": "codex"}, s), expected_rv=str(created.metadata.resource_version)
        )
    current = await store.get("a")
    assert current.spec.type == "claude" and current.spec.suspend is True
    with pytest.raises(Conflict):
        await store.mark_deleted("a", expected_rv=str(created.metadata.resource_version))
    assert (await store.get("a")).metadata.deletion_timestamp is None


async def test_a_record_being_deleted_cannot_be_replaced_and_marking_it_again_writes_nothing(
    store: Store, tmp_path: Path
):
    s = settings(tmp_path)
    await store.create(agent({"name": "a", "type": "claude"}, s))
    marked = await store.mark_deleted("a")
    assert marked.metadata.deletion_timestamp is not None and marked.phase == "Terminating"
    again = await store.mark_deleted("a")
    assert again.metadata.resource_version == marked.metadata.resource_version
    with pytest.raises(Conflict, match="being deleted"):
        await store.replace(agent({"name": "a", "type": "codex"}, s))
    with pytest.raises(NotFound):
        await store.mark_deleted("missing")


async def test_status_write_for_a_replaced_record_is_dropped(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    first = await store.create(agent({"name": "a", "type": "claude"}, s))
    await store.mark_deleted("a")
    assert await store.purge("a", first.metadata.uid)
    await store.create(agent({"name": "a", "type": "claude"}, s))
    assert await store.update_status("a", first.metadata.uid, {"phase": "Running"}) is None
    assert (await store.get("a")).phase == "Pending"


async def test_a_name_taken_by_a_write_not_yet_committed_is_refused(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    results = await asyncio.gather(
        store.create(agent({"name": "same", "type": "claude"}, s)),
        store.create(agent({"name": "same", "type": "codex"}, s)),
        store.create(agent({"name": "agent-same", "type": "codex"}, s)),
        return_exceptions=True,
    )
    assert isinstance(results[0], Agent)
    assert isinstance(results[1], AlreadyExists)
    assert isinstance(results[2], AlreadyExists) and "parallax-agent-same" in str(results[2])
    assert (await store.get("same")).spec.type == "claude"


async def test_a_client_holding_the_committed_version_is_not_stale_because_of_a_queued_status_write(
    store: Store, tmp_path: Path
):
    s = settings(tmp_path)
    created = await store.create(agent({"name": "a", "type": "claude"}, s))
    read = await store.get("a")  # what a client can see
    status = asyncio.ensure_future(store.update_status("a", created.metadata.uid, {"phase": "Running"}))
    await asyncio.sleep(0)  # queued, not committed: no client could have read its version
    rv = str(read.metadata.resource_version)
    updated = await store.replace(agent({"name": "a", "type": "codex"}, s), expected_rv=rv)
    assert updated.spec.type == "codex" and updated.status["phase"] == "Running"
    await status
    # A version that is really stale is still refused.
    with pytest.raises(Conflict):
        await store.mark_deleted("a", expected_rv=rv)


def label(key: str):
    """An update adding label ``key``."""

    def build(current: Agent) -> Agent:
        labels = {**current.metadata.labels, key: "v"}
        return Agent(replace(current.metadata, labels=labels), current.spec, current.status)

    return build


async def test_update_builds_on_the_latest_queued_version(store: Store, tmp_path: Path):
    """Concurrent read-modify-writes (PATCH, PUT) each see the writes queued before them: none is lost."""
    s = settings(tmp_path)
    await store.create(agent({"name": "a", "type": "claude"}, s))

    await asyncio.gather(*(store.update("a", label(f"k{i}")) for i in range(30)))
    assert set((await store.get("a")).metadata.labels) == {f"k{i}" for i in range(30)}

    def invalid(current: Agent) -> Agent:
        raise ValueError("refused")

    before = (await store.get("a")).metadata.resource_version
    with pytest.raises(ValueError):
        await store.update("a", invalid)
    assert (await store.get("a")).metadata.resource_version == before
    with pytest.raises(Conflict):
        await store.update("a", label("late"), expected_rv=str(before - 1))
    with pytest.raises(NotFound):
        await store.update("missing", label("x"))


# -- write_all ------------------------------------------------------------------------------------


async def test_write_all_commits_everything_together_or_nothing(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    old = await store.create(agent({"name": "old", "type": "claude"}, s))
    feed = store.subscribe()
    rv = await store.current_rv()
    refused = [
        Write("create", "fresh", agent({"name": "fresh", "type": "claude"}, s)),
        Write("replace", "old", agent({"name": "old", "type": "codex"}, s)),
        Write("create", "agent-fresh", agent({"name": "agent-fresh", "type": "claude"}, s)),  # same container
    ]
    with pytest.raises(AlreadyExists, match="parallax-agent-fresh") as caught:
        await store.write_all(refused)
    assert caught.value.index == 2
    assert feed.empty() and await store.current_rv() == rv
    assert [a.name for a in await store.list()] == ["old"] and (await store.get("old")).spec.type == "claude"

    written = await store.write_all(
        [
            Write("create", "fresh", agent({"name": "fresh", "type": "claude"}, s)),
            Write("replace", "old", agent({"name": "old", "type": "codex"}, s)),
            Write("delete", "old"),
        ]
    )
    assert [w.metadata.resource_version for w in written] == [rv + 1, rv + 2, rv + 3]
    assert written[1].spec.type == "codex" and written[1].metadata.generation == old.metadata.generation + 1
    assert written[2].metadata.deletion_timestamp is not None
    assert [(c.type, c.agent.name) for c in (feed.get_nowait() for _ in range(3))] == [
        ("ADDED", "fresh"),
        ("MODIFIED", "old"),
        ("MODIFIED", "old"),
    ]


async def test_write_all_refuses_a_write_without_its_agent_and_writes_nothing(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    rv = await store.current_rv()
    with pytest.raises(ValueError, match="needs the agent"):
        await store.write_all([Write("create", "x", agent({"name": "x", "type": "claude"}, s)), Write("create", "y")])
    assert await store.list() == [] and await store.current_rv() == rv
    # Nothing of the refused batch is left behind: its names are free.
    assert (await store.create(agent({"name": "x", "type": "claude"}, s))).metadata.resource_version == rv + 1


async def test_write_all_conflicts_on_a_desired_state_change_it_did_not_see_but_not_on_status(
    store: Store, tmp_path: Path
):
    s = settings(tmp_path)
    created = await store.create(agent({"name": "a", "type": "claude"}, s))
    planned = await store.get("a")
    # The controller's status write, queued meanwhile: not a reason to refuse.
    status = asyncio.ensure_future(store.update_status("a", created.metadata.uid, {"phase": "Suspended"}))
    await asyncio.sleep(0)
    relabelled = agent({"name": "a", "type": "claude", "labels": {"by": "apply"}}, s)
    (written,) = await store.write_all([Write("replace", "a", relabelled, planned_from=planned)])
    assert written.metadata.labels == {"by": "apply"} and (await status) is not None
    # A user's change queued meanwhile: refused, and it wins.
    planned = await store.get("a")
    put = asyncio.ensure_future(store.replace(agent({"name": "a", "type": "codex", "labels": {"by": "put"}}, s)))
    await asyncio.sleep(0)
    with pytest.raises(Conflict, match="changed after it was read"):
        await store.write_all([Write("delete", "a", planned_from=planned)])
    await put
    current = await store.get("a")
    assert current.spec.type == "codex" and current.metadata.deletion_timestamp is None


# -- announcing: the change feed and events -------------------------------------------------------


async def test_change_feed_reports_every_write(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    feed = store.subscribe()
    created = await store.create(agent({"name": "a", "type": "claude"}, s))
    await store.update_status("a", created.metadata.uid, {"phase": "Running"})
    await store.mark_deleted("a")
    await store.purge("a", created.metadata.uid)
    changes = [feed.get_nowait() for _ in range(4)]
    assert [(c.type, c.spec_changed) for c in changes] == [
        ("ADDED", True),
        ("MODIFIED", False),
        ("MODIFIED", True),
        ("DELETED", True),
    ]
    versions = [c.agent.metadata.resource_version for c in changes]
    assert versions == sorted(versions) and len(set(versions)) == 4
    with pytest.raises(NotFound):
        await store.get("a")


async def test_concurrent_writes_are_announced_in_version_order(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    feed = store.subscribe()
    names = [f"a{i}" for i in range(200)]
    created = await asyncio.gather(*(store.create(agent({"name": n, "type": "claude"}, s)) for n in names))
    versions = [c.agent.metadata.resource_version for c in (feed.get_nowait() for _ in range(feed.qsize()))]
    assert len(versions) == 200 and versions == sorted(versions) and len(set(versions)) == 200
    assert sorted(c.metadata.resource_version for c in created) == versions
    assert await store.current_rv() == versions[-1]
    assert [a.name for a in await store.list()] == sorted(names)


async def test_repeated_events_are_counted_not_repeated_and_bounded(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    created = await store.create(agent({"name": "a", "type": "claude"}, s))
    feed = store.subscribe_feed()
    for _ in range(3):
        await store.record_event(created, "Warning", "IMAGE_NOT_FOUND", "image x is not present locally")
    await store.record_event(created, "Normal", "Started", "started container abc")
    events = await store.list_events("a", created.metadata.uid)
    assert [(e.reason, e.count) for e in events] == [("IMAGE_NOT_FOUND", 3), ("Started", 1)]
    assert events[0].first_timestamp <= events[0].last_timestamp
    assert feed.qsize() == 4
    for i in range(60):
        await store.record_event(created, "Normal", "Tick", f"event {i}")
    events = await store.list_events("a")
    assert len(events) == 50
    assert events[-1].message == "event 59"


async def test_the_feed_carries_changes_and_events_in_version_order(store: Store, tmp_path: Path):
    """One batch with status writes and an event between them: a watcher must see them in version order,
    or a client resuming after the later one would never get the event."""
    created = await store.create(agent({"name": "a", "type": "claude"}, settings(tmp_path)))
    feed = store.subscribe_feed()
    uid = created.metadata.uid
    await asyncio.gather(
        store.update_status("a", uid, {"phase": "Pending", "step": 1}),
        store.record_event(created, "Normal", "Created", "created container x"),
        store.update_status("a", uid, {"phase": "Running", "step": 2}),
    )
    seen = [feed.get_nowait() for _ in range(feed.qsize())]
    kinds = ["event" if isinstance(item, AgentEvent) else "change" for item in seen]
    versions = [
        item.resource_version if isinstance(item, AgentEvent) else item.agent.metadata.resource_version for item in seen
    ]
    assert kinds == ["change", "event", "change"] and versions == sorted(versions), (kinds, versions)


# -- bounded subscribers --------------------------------------------------------------------------


async def test_a_subscriber_that_never_reads_is_cut_off_and_the_others_go_on(make_store: MakeStore, tmp_path: Path):
    s = settings(tmp_path)
    store = await make_store(buffer=8)
    idle, idle_feed = store.subscribe(), store.subscribe_feed()
    reader = store.subscribe()
    seen: list[str] = []

    async def read() -> None:
        while len(seen) < 40:
            seen.append((await reader.get()).agent.name)

    reading = asyncio.ensure_future(read())
    for i in range(40):
        await store.create(agent({"name": f"a{i}", "type": "claude"}, s))
    await asyncio.wait_for(reading, 5)
    assert seen == [f"a{i}" for i in range(40)]
    for queue in (idle, idle_feed):
        assert queue.cut_off and "behind" in queue.cut_off
        assert queue.qsize() == 0  # what it had queued was let go: it holds nothing any more
        with pytest.raises(CutOff):
            queue.get_nowait()
        with pytest.raises(CutOff):
            await queue.get()
    store.unsubscribe(idle)
    store.unsubscribe_feed(idle_feed)
    # The store goes on, and a new subscription works.
    again = store.subscribe()
    await store.create(agent({"name": "after", "type": "claude"}, s))
    assert again.get_nowait().agent.name == "after"
    assert len(await store.list()) == 41


async def test_a_subscriber_of_one_name_gets_that_record_s_changes_only(store: Store, tmp_path: Path):
    """What ``?wait=true`` waits on: the changes of its own agent, in order, none of the others'."""
    s = settings(tmp_path)

    mine, every = store.subscribe("mine"), store.subscribe()
    await store.create(agent({"name": "other", "type": "claude"}, s))
    await store.create(agent({"name": "mine", "type": "claude"}, s))
    await store.update("other", label("x"))
    await store.update("mine", label("y"))
    await store.mark_deleted("mine")
    got = []
    while not mine.empty():
        change = mine.get_nowait()
        got.append((change.type, change.agent.name))
    assert [t for t, _ in got][:2] == ["ADDED", "MODIFIED"] and {n for _, n in got} == {"mine"}
    assert every.qsize() == len(got) + 2  # the other record's two changes went to the subscriber of all
    store.unsubscribe(mine)
    await store.update("other", label("z"))
    assert mine.empty()


async def test_subscribing_then_reading_the_version_then_listing_misses_nothing(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    await store.create(agent({"name": "before", "type": "claude"}, s))
    feed = store.subscribe_feed()
    rv = await store.current_rv()
    listed = {a.name for a in await store.list()}
    await store.create(agent({"name": "after", "type": "claude"}, s))
    (change,) = [feed.get_nowait() for _ in range(feed.qsize())]
    assert listed == {"before"}
    assert not isinstance(change, AgentEvent) and change.agent.name == "after"
    assert change.agent.metadata.resource_version > rv


# -- the watch hub over the store: resuming, expiry, slow watchers -----------------------------------


async def _hub(store: Store, **options: int) -> WatchHub:
    hub = WatchHub(store, **options)
    await hub.start()
    return hub


async def _settle(hub: WatchHub, store: Store) -> None:
    assert await hub.caught_up(await store.current_rv(), 5)


async def test_a_watch_resumes_from_a_version_with_exactly_what_it_missed(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    hub = await _hub(store)
    try:
        first = await store.create(agent({"name": "a", "type": "claude"}, s))
        await store.create(agent({"name": "b", "type": "claude"}, s))
        await store.record_event(first, "Normal", "Created", "created container x")
        await store.mark_deleted("a")
        await _settle(hub, store)
        listener = hub.listen(first.metadata.resource_version, lambda item: True)
        items = [await listener.next() for _ in range(3)]
        assert [(i.type, i.name) for i in items if i is not None] == [("ADDED", "b"), ("EVENT", "a"), ("MODIFIED", "a")]
        versions = [i.resource_version for i in items if i is not None]
        assert versions == sorted(versions) and versions[0] > first.metadata.resource_version
        listener.close()
    finally:
        await hub.stop()


async def test_a_watch_from_before_the_hub_started_is_too_old(store: Store, tmp_path: Path):
    await store.create(agent({"name": "a", "type": "claude"}, settings(tmp_path)))
    hub = await _hub(store)
    try:
        with pytest.raises(Expired, match="re-list"):
            hub.listen(0, lambda item: True)
        hub.listen(await store.current_rv(), lambda item: True).close()
    finally:
        await hub.stop()


async def test_a_watcher_that_never_reads_is_cut_off_with_expired_while_the_others_go_on(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    hub = await _hub(store, buffer=16)
    try:
        idle = hub.listen(None, lambda item: True)
        reader = hub.listen(None, lambda item: True)
        seen: list[str] = []

        async def read() -> None:
            while len(seen) < 60:
                item = await reader.next()
                assert item is not None
                seen.append(item.name)

        reading = asyncio.ensure_future(read())
        deepest = 0
        for i in range(60):
            await store.create(agent({"name": f"a{i}", "type": "claude"}, s))
            deepest = max(deepest, idle.queue.qsize())
        await asyncio.wait_for(reading, 5)
        assert seen == [f"a{i}" for i in range(60)]
        assert deepest <= 16, "never more than the buffer is kept for a watcher"
        assert idle not in hub._listeners and reader in hub._listeners
        assert idle.queue.qsize() == 0
        with pytest.raises(Expired, match="re-list"):
            await idle.next()
    finally:
        await hub.stop()


async def test_a_hub_that_falls_behind_the_store_cuts_every_watcher_off_and_starts_again(
    make_store: MakeStore, tmp_path: Path
):
    s = settings(tmp_path)
    store = await make_store(buffer=4)
    hub = await _hub(store)
    try:
        before = await store.current_rv()
        watcher = hub.listen(None, lambda item: True)
        # One write_all announces its ten changes at once: more than the hub's feed may hold.
        burst = [Write("create", f"w{i}", agent({"name": f"w{i}", "type": "claude"}, s)) for i in range(10)]
        await store.write_all(burst)
        with pytest.raises(Expired, match="re-list"):
            await asyncio.wait_for(watcher.next(), 5)
        await _settle(hub, store)
        with pytest.raises(Expired):
            hub.listen(before, lambda item: True)  # what it missed is not in its history
        resumed = hub.listen(await store.current_rv(), lambda item: True)
        await store.create(agent({"name": "later", "type": "claude"}, s))
        item = await asyncio.wait_for(resumed.next(), 5)
        assert item is not None and (item.type, item.name) == ("ADDED", "later")
    finally:
        await hub.stop()


async def test_activity_is_a_status_write_that_never_moves_back(store: Store, tmp_path: Path):
    s = settings(tmp_path)
    created = await store.create(agent({"name": "a", "type": "claude"}, s))
    changes = store.subscribe()
    try:
        noted = await store.record_activity("a", "2026-01-01T00:00:10.000000Z")
        assert noted is not None and noted.status["lastActivityTime"] == "2026-01-01T00:00:10.000000Z"
        assert noted.metadata.generation == created.metadata.generation
        change = await asyncio.wait_for(changes.get(), 5)
        assert change.spec_changed is False
        older = await store.record_activity("a", "2026-01-01T00:00:05.000000Z")
        assert older is not None and older.status["lastActivityTime"] == "2026-01-01T00:00:10.000000Z"
        kept = await store.update_status("a", created.metadata.uid, {"phase": "Running"})
        assert kept is not None and kept.status == {
            "phase": "Running",
            "lastActivityTime": "2026-01-01T00:00:10.000000Z",
        }
        assert await store.record_activity("nobody", "2026-01-01T00:00:10.000000Z") is None
    finally:
        store.unsubscribe(changes)


# -- Secrets ----------------------------------------------------------------------------------------


async def test_a_secret_is_created_once_versioned_by_its_data_and_deleted(store: Store):
    created = await store.put_secret(Secret("anthropic", {"apiKey": "sk-1", "org": "o"}), create=True)
    assert (created.version, created.key_versions, created.uid != "") == (1, {"apiKey": 1, "org": 1}, True)
    with pytest.raises(AlreadyExists):
        await store.put_secret(Secret("anthropic", {"apiKey": "sk-other"}), create=True)
    assert (await store.get_secret("anthropic")).data == {"apiKey": "sk-1", "org": "o"}
    same = await store.put_secret(Secret("anthropic", {"apiKey": "sk-1", "org": "o"}, {"team": "a"}), create=False)
    assert same.version == 1 and same.labels == {"team": "a"}  # labels alone move no version
    changed = await store.put_secret(Secret("anthropic", {"apiKey": "sk-2", "org": "o"}), create=False)
    assert (changed.version, changed.key_versions, changed.uid) == (2, {"apiKey": 2, "org": 1}, created.uid)
    assert [s.name for s in await store.list_secrets()] == ["anthropic"]
    with pytest.raises(NotFound):
        await store.put_secret(Secret("missing", {"k": "v"}), create=False)
    await store.delete_secret("anthropic")
    with pytest.raises(NotFound):
        await store.get_secret("anthropic")
    with pytest.raises(NotFound):
        await store.delete_secret("anthropic")
    assert await store.list_secrets() == []


async def test_secret_changes_are_announced_by_name_and_a_label_change_is_not(store: Store):
    changes = store.subscribe_secrets()
    try:
        await store.put_secret(Secret("s", {"k": "v1"}), create=True)
        await store.put_secret(Secret("s", {"k": "v1"}, {"x": "y"}), create=False)
        await store.put_secret(Secret("s", {"k": "v2"}), create=False)
        await store.delete_secret("s")
        seen = [await asyncio.wait_for(changes.get(), 5) for _ in range(3)]
        assert seen == ["s", "s", "s"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(changes.get(), 1.5)  # the label-only write announced nothing
    finally:
        store.unsubscribe_secrets(changes)


async def test_an_agent_referencing_a_secret_keeps_the_reference_and_its_inline_values(store: Store, tmp_path: Path):
    body = {
        "name": "ref",
        "type": "claude",
        "env": {"ANTHROPIC_API_KEY": {"secretKeyRef": {"name": "anthropic", "key": "apiKey"}}, "INLINE": "sk-in"},
    }
    created = await store.create(agent(body, settings(tmp_path)))
    got = await store.get("ref")
    assert got.spec.env == {"INLINE": "sk-in"}
    assert got.spec.env_refs["ANTHROPIC_API_KEY"].name == "anthropic"
    assert got.to_manifest()["spec"]["env"] == {
        "ANTHROPIC_API_KEY": {"secretKeyRef": {"name": "anthropic", "key": "apiKey"}},
        "INLINE": "<redacted>",
    }
    assert created.metadata.generation == got.metadata.generation
