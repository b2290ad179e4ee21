"""What is SQLite's own in the SQLite store: its files and lock, durability across a reopen of the same
file, group commits, a full disk. What every store must do is tests/contract/test_store_contract.py,
which runs against SqliteStore too."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from controller.admission.admit import admit, spec_defaults
from controller.config import Settings
from controller.model.agent import Agent
from controller.store.interface import AlreadyExists, NotFound, StoreUnavailable, Write
from controller.store.sqlite import SqliteStore


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


async def test_a_write_all_is_one_commit_and_a_refused_one_none(store: SqliteStore, tmp_path: Path):
    """SQLite's side of the contract's all-or-nothing write_all (tests/contract): one transaction."""
    s = settings(tmp_path)
    await store.create(agent({"name": "old", "type": "claude"}, s))
    batches = store.batches
    refused = [
        Write("create", "fresh", agent({"name": "fresh", "type": "claude"}, s)),
        Write("create", "agent-fresh", agent({"name": "agent-fresh", "type": "claude"}, s)),  # same container
    ]
    with pytest.raises(AlreadyExists):
        await store.write_all(refused)
    assert store.batches == batches
    await store.write_all(
        [
            Write("create", "fresh", agent({"name": "fresh", "type": "claude"}, s)),
            Write("replace", "old", agent({"name": "old", "type": "codex"}, s)),
            Write("delete", "old"),
        ]
    )
    assert store.batches == batches + 1, "one commit for the three writes"


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
