"""The SQLite store: generation, resourceVersion, compare-and-set, change feed, durability, lock."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from controller.admission import admit, spec_defaults
from controller.config import Settings
from controller.model import Agent
from controller.store import AgentEvent, AlreadyExists, Conflict, NotFound, SqliteStore, StoreUnavailable, Write


def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "data" / "agents.db"))


def agent(body: dict, s: Settings) -> Agent:
    return admit(body, s)[0]


@pytest.fixture
async def store(tmp_path: Path):
    s = settings(tmp_path)
    st = SqliteStore(s.store_path, spec_defaults(s))
    await st.open()
    yield st
    await st.close()


async def test_create_sets_uid_generation_and_resource_version(store: SqliteStore, tmp_path: Path):
    created = await store.create(agent({"name": "a", "type": "claude"}, settings(tmp_path)))
    assert created.metadata.uid
    assert created.metadata.generation == 1
    assert created.metadata.resource_version >= 1
    assert created.status["phase"] == "Pending"
    with pytest.raises(AlreadyExists):
        await store.create(agent({"name": "a", "type": "codex"}, settings(tmp_path)))
    assert (await store.get("a")).spec.type == "claude"


async def test_two_names_sharing_a_container_name_are_refused(store: SqliteStore, tmp_path: Path):
    await store.create(agent({"name": "agent-7", "type": "claude"}, settings(tmp_path)))
    with pytest.raises(AlreadyExists, match="parallax-agent-7"):
        await store.create(agent({"name": "7", "type": "claude"}, settings(tmp_path)))


async def test_generation_moves_on_spec_change_only_and_rv_on_every_write(store: SqliteStore, tmp_path: Path):
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


async def test_stale_resource_version_is_a_conflict_and_changes_nothing(store: SqliteStore, tmp_path: Path):
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


async def test_status_write_for_a_replaced_record_is_dropped(store: SqliteStore, tmp_path: Path):
    s = settings(tmp_path)
    first = await store.create(agent({"name": "a", "type": "claude"}, s))
    await store.mark_deleted("a")
    assert await store.purge("a", first.metadata.uid)
    await store.create(agent({"name": "a", "type": "claude"}, s))
    assert await store.update_status("a", first.metadata.uid, {"phase": "Running"}) is None
    assert (await store.get("a")).phase == "Pending"


async def test_change_feed_reports_every_write(store: SqliteStore, tmp_path: Path):
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


async def test_records_and_secrets_survive_a_reopen(tmp_path: Path):
    s = settings(tmp_path)
    first = SqliteStore(s.store_path, spec_defaults(s))
    await first.open()
    created = await first.create(agent({"name": "a", "type": "claude", "env": {"KEY": "secret"}}, s))
    await first.close()
    second = SqliteStore(s.store_path, spec_defaults(s))
    await second.open()
    try:
        again = await second.get("a")
        assert again.metadata.uid == created.metadata.uid
        assert again.spec.env == {"KEY": "secret"}
        assert again.to_manifest()["spec"]["env"] == {"KEY": "<redacted>"}
        newer = await second.replace(replace(again, spec=replace(again.spec, suspend=True)))
        assert newer.metadata.resource_version > created.metadata.resource_version
    finally:
        await second.close()


async def test_second_controller_on_the_same_store_is_refused(store: SqliteStore, tmp_path: Path):
    s = settings(tmp_path)
    other = SqliteStore(s.store_path, spec_defaults(s))
    with pytest.raises(StoreUnavailable, match="in use"):
        await other.open()


async def test_store_file_and_directory_are_private(store: SqliteStore, tmp_path: Path):
    path = Path(store.path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


async def test_repeated_events_are_counted_not_repeated_and_bounded(store: SqliteStore, tmp_path: Path):
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


async def test_concurrent_writes_share_commits_and_are_announced_in_version_order(store: SqliteStore, tmp_path: Path):
    s = settings(tmp_path)
    feed = store.subscribe()
    names = [f"a{i}" for i in range(200)]
    created = await asyncio.gather(*(store.create(agent({"name": n, "type": "claude"}, s)) for n in names))
    assert store.batches < 20, f"200 concurrent creates took {store.batches} commits"
    versions = [c.agent.metadata.resource_version for c in (feed.get_nowait() for _ in range(feed.qsize()))]
    assert len(versions) == 200 and versions == sorted(versions) and len(set(versions)) == 200
    assert sorted(c.metadata.resource_version for c in created) == versions
    assert await store.current_rv() == versions[-1]
    await store.close()
    reopened = SqliteStore(s.store_path, spec_defaults(s))
    await reopened.open()
    try:
        assert [a.name for a in await reopened.list()] == sorted(names)
        assert await reopened.current_rv() == versions[-1]
    finally:
        await reopened.close()
        await store.open()  # the fixture closes it again


async def test_a_name_taken_by_a_write_not_yet_committed_is_refused(store: SqliteStore, tmp_path: Path):
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


async def test_a_failed_commit_refuses_its_batch_and_keeps_what_was_stored(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    s = settings(tmp_path)
    kept = await store.create(agent({"name": "kept", "type": "claude"}, s))
    feed = store.subscribe()

    def disk_full(batch: object, rv: int) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_commit", disk_full)
    results = await asyncio.gather(
        store.create(agent({"name": "new", "type": "claude"}, s)),
        store.replace(agent({"name": "kept", "type": "codex"}, s)),
        store.update_status("kept", kept.metadata.uid, {"phase": "Running"}),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) and "disk is full" in str(r) for r in results), results
    assert store.write_error is not None and feed.empty()
    assert await store.current_rv() == kept.metadata.resource_version
    with pytest.raises(NotFound):
        await store.get("new")
    assert (await store.get("kept")).spec.type == "claude"
    monkeypatch.undo()
    # The refused writes left nothing behind: the same create works, and takes the next version.
    again = await store.create(agent({"name": "new", "type": "claude"}, s))
    assert again.metadata.resource_version == kept.metadata.resource_version + 1
    assert store.write_error is None


async def test_write_all_commits_everything_together_or_nothing(store: SqliteStore, tmp_path: Path):
    s = settings(tmp_path)
    old = await store.create(agent({"name": "old", "type": "claude"}, s))
    feed = store.subscribe()
    rv, batches = await store.current_rv(), store.batches
    refused = [
        Write("create", "fresh", agent({"name": "fresh", "type": "claude"}, s)),
        Write("replace", "old", agent({"name": "old", "type": "codex"}, s)),
        Write("create", "agent-fresh", agent({"name": "agent-fresh", "type": "claude"}, s)),  # same container
    ]
    with pytest.raises(AlreadyExists, match="parallax-agent-fresh") as caught:
        await store.write_all(refused)
    assert caught.value.index == 2
    assert feed.empty() and await store.current_rv() == rv and store.batches == batches
    assert [a.name for a in await store.list()] == ["old"] and (await store.get("old")).spec.type == "claude"

    written = await store.write_all(
        [
            Write("create", "fresh", agent({"name": "fresh", "type": "claude"}, s)),
            Write("replace", "old", agent({"name": "old", "type": "codex"}, s)),
            Write("delete", "old"),
        ]
    )
    assert store.batches == batches + 1, "one commit for the three writes"
    assert [w.metadata.resource_version for w in written] == [rv + 1, rv + 2, rv + 3]
    assert written[1].spec.type == "codex" and written[1].metadata.generation == old.metadata.generation + 1
    assert written[2].metadata.deletion_timestamp is not None
    assert [(c.type, c.agent.name) for c in (feed.get_nowait() for _ in range(3))] == [
        ("ADDED", "fresh"),
        ("MODIFIED", "old"),
        ("MODIFIED", "old"),
    ]


async def test_the_feed_carries_changes_and_events_in_version_order(store: SqliteStore, tmp_path: Path):
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


async def test_a_write_all_is_never_split_across_commits(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    s = settings(tmp_path)
    sizes: list[list[str]] = []
    commit = store._commit

    def recording(batch: list, rv: int) -> list:
        sizes.append([str(w.rv) for w in batch])
        return commit(batch, rv)

    monkeypatch.setattr(store, "_commit", recording)
    store.MAX_BATCH = 2
    lone = asyncio.ensure_future(store.create(agent({"name": "lone", "type": "claude"}, s)))
    await asyncio.sleep(0)
    written = await store.write_all(
        [Write("create", f"w{i}", agent({"name": f"w{i}", "type": "claude"}, s)) for i in range(5)]
    )
    await lone
    assert len(written) == 5
    assert len(sizes[-1]) >= 5, f"the write_all was split: {sizes}"


async def test_write_all_conflicts_on_a_desired_state_change_it_did_not_see_but_not_on_status(
    store: SqliteStore, tmp_path: Path
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


async def test_a_client_holding_the_committed_version_is_not_stale_because_of_a_queued_status_write(
    store: SqliteStore, tmp_path: Path
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


async def test_update_builds_on_the_latest_queued_version(store: SqliteStore, tmp_path: Path):
    """Concurrent read-modify-writes (PATCH, PUT) each see the writes queued before them: none is lost."""
    s = settings(tmp_path)
    await store.create(agent({"name": "a", "type": "claude"}, s))

    def label(key: str):
        def build(current: Agent) -> Agent:
            labels = {**current.metadata.labels, key: "v"}
            return Agent(replace(current.metadata, labels=labels), current.spec, current.status)

        return build

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
