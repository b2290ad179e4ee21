"""What is PostgreSQL's own in the PostgreSQL store: several controllers on one database (each sees the
others' writes, in version order, and compare-and-set holds across them), schema migrations, copying a
SQLite store in (``parallax store migrate``), and a database that is not there. What every store must
do is tests/contract/ (which runs against this store too). Real PostgreSQL (scripts/setup-postgres.sh)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from controller.admission.admit import admit, spec_defaults
from controller.config import Settings
from controller.model.agent import Agent
from controller.model.secret import Secret
from controller.observe.watch import WatchHub
from controller.store.cipher import SecretCipher
from controller.store.interface import AgentEvent, AlreadyExists, Conflict, Store, StoreUnavailable
from controller.store.postgres import MIGRATIONS, PostgresStore
from controller.store.sqlite import SqliteStore
from controller.store.url import open_store
from tests.postgres import drop_test_schemas_now, fresh_url

PARALLAX = str(Path(sys.executable).parent / "parallax")


@pytest.fixture(scope="module", autouse=True)
def _drop_schemas() -> object:
    yield
    drop_test_schemas_now()


def settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "data" / "agents.db"))


def agent(body: dict, s: Settings) -> Agent:
    return admit(body, s)[0]


async def _two(tmp_path: Path) -> tuple[str, Store, Store]:
    url = await fresh_url()
    defaults = spec_defaults(settings(tmp_path))
    first, second = await asyncio.gather(open_store(url, defaults), open_store(url, defaults))  # migrate once
    return url, first, second


async def _until(check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.02)


async def test_two_controllers_see_each_others_writes_in_version_order(tmp_path: Path):
    s = settings(tmp_path)
    _, a, b = await _two(tmp_path)
    try:
        feed = b.subscribe_feed()
        created = await a.create(agent({"name": "pgt-one", "type": "claude", "env": {"KEY": "v1"}}, s))
        await b.record_event(created, "Normal", "Created", "from b")
        await a.update_status("pgt-one", created.metadata.uid, {"phase": "Running"})
        seen: list[Agent | AgentEvent] = []

        async def three() -> bool:
            while not feed.empty():
                item = feed.get_nowait()
                seen.append(item if isinstance(item, AgentEvent) else item.agent)
            return len(seen) >= 3

        assert await _until(three)
        versions = [i.resource_version if isinstance(i, AgentEvent) else i.metadata.resource_version for i in seen]
        assert versions == sorted(versions) and len(set(versions)) == 3
        got = await b.get("pgt-one")
        assert got.phase == "Running" and got.spec.env == {"KEY": "v1"}  # secrets are kept, not redacted
        assert await b.current_rv() == await a.current_rv()
        assert [e.reason for e in await a.list_events("pgt-one")] == ["Created"]
    finally:
        await a.close()
        await b.close()


async def test_compare_and_set_and_names_hold_across_controllers(tmp_path: Path):
    s = settings(tmp_path)
    _, a, b = await _two(tmp_path)
    try:
        results = await asyncio.gather(
            a.create(agent({"name": "pgt-same", "type": "claude"}, s)),
            b.create(agent({"name": "pgt-same", "type": "codex"}, s)),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["Agent", "AlreadyExists"]
        winner = next(r for r in results if isinstance(r, Agent))
        await _until(lambda: _has(b, "pgt-same"))
        read = await b.get("pgt-same")
        await a.replace(
            agent({"name": "pgt-same", "type": "aider"}, s), expected_rv=str(read.metadata.resource_version)
        )
        # b still holds the old version (it may not even have heard of the new one): stale everywhere
        with pytest.raises(Conflict, match="stale"):
            await b.replace(
                agent({"name": "pgt-same", "type": "gemini"}, s), expected_rv=str(read.metadata.resource_version)
            )
        assert (await a.get("pgt-same")).spec.type == "aider"
        with pytest.raises(AlreadyExists, match="parallax-agent-pgt-same"):
            await b.create(agent({"name": "agent-pgt-same", "type": "claude"}, s))
        assert winner.metadata.generation == 1
    finally:
        await a.close()
        await b.close()


async def _has(store: Store, name: str) -> bool:
    return any(x.name == name for x in await store.list())


async def test_a_watch_on_one_controller_resumes_with_what_another_wrote(tmp_path: Path):
    s = settings(tmp_path)
    _, a, b = await _two(tmp_path)
    hub = WatchHub(b)
    await hub.start()
    try:
        first = await a.create(agent({"name": "pgt-w1", "type": "claude"}, s))
        await a.create(agent({"name": "pgt-w2", "type": "claude"}, s))
        assert await hub.caught_up(await a.current_rv(), 5)
        listener = hub.listen(first.metadata.resource_version, lambda item: True)
        item = await asyncio.wait_for(listener.next(), 5)
        assert item is not None and (item.type, item.name) == ("ADDED", "pgt-w2")
    finally:
        await hub.stop()
        await a.close()
        await b.close()


async def test_migrations_are_recorded_and_a_newer_schema_is_refused(tmp_path: Path):
    url, a, b = await _two(tmp_path)
    await a.close()
    await b.close()
    conn = await asyncpg.connect(url)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM parallax_schema ORDER BY version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))  # applied once, though two opened together
        await conn.execute("INSERT INTO parallax_schema (version) VALUES ($1)", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(StoreUnavailable, match="newer than this controller knows"):
        await open_store(url, spec_defaults(settings(tmp_path)))


async def test_a_database_that_is_not_there_is_store_unavailable_without_the_password(tmp_path: Path):
    with pytest.raises(StoreUnavailable) as caught:
        await open_store("postgresql://parallax:hunter2@127.0.0.1:1/parallax", spec_defaults(settings(tmp_path)))
    assert "hunter2" not in str(caught.value) and "127.0.0.1" in str(caught.value)


async def test_store_migrate_copies_agents_status_events_and_the_version(tmp_path: Path):
    s = settings(tmp_path)
    defaults = spec_defaults(s)
    sqlite = SqliteStore(s.store_path, defaults)
    await sqlite.open()
    one = await sqlite.create(agent({"name": "pgt-m1", "type": "claude", "env": {"TOKEN": "t0ken"}}, s))
    await sqlite.create(agent({"name": "pgt-m2", "type": "codex", "labels": {"team": "x"}}, s))
    await sqlite.update_status("pgt-m1", one.metadata.uid, {"phase": "Running", "restartCount": 2})
    for _ in range(2):
        await sqlite.record_event(one, "Warning", "BackOff", "restarting")
    await sqlite.mark_deleted("pgt-m2")
    await sqlite.put_secret(Secret("pgt-s", {"apiKey": "sk-migrated-4471"}), create=True)
    expected = {a.name: a.to_manifest(redact=False) for a in await sqlite.list()}
    events = [e.to_dict() for e in await sqlite.list_events("pgt-m1")]
    rv = await sqlite.current_rv()

    url = await fresh_url()
    source = f"sqlite://{s.store_path}"
    busy = subprocess.run([PARALLAX, "store", "migrate", "--from", source, "--to", url], capture_output=True, text=True)
    assert busy.returncode != 0 and "in use by a controller" in busy.stderr  # the source is open: refused
    await sqlite.close()
    done = subprocess.run([PARALLAX, "store", "migrate", "--from", source, "--to", url], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"copied 2 agents, 1 events and 1 secrets; resourceVersion {rv}" in done.stdout
    assert s.secret_key_path in done.stdout

    store = await open_store(url, defaults, cipher=SecretCipher.load(s.secret_key_path))
    try:
        assert {a.name: a.to_manifest(redact=False) for a in await store.list()} == expected
        assert (await store.get_secret("pgt-s")).data == {"apiKey": "sk-migrated-4471"}
        assert await _raw_rows_holding(url, ["t0ken", "sk-migrated-4471"]) == []
        assert [e.to_dict() for e in await store.list_events("pgt-m1")] == events
        assert await store.current_rv() == rv
        later = await store.create(agent({"name": "pgt-m3", "type": "claude"}, s))
        assert later.metadata.resource_version == rv + 1  # versions go on from the copy's
    finally:
        await store.close()
    again = subprocess.run(
        [PARALLAX, "store", "migrate", "--from", source, "--to", url], capture_output=True, text=True
    )
    assert again.returncode != 0 and "already holds 3 agents" in again.stderr
    wrong = subprocess.run([PARALLAX, "store", "migrate", "--from", url, "--to", url], capture_output=True, text=True)
    assert wrong.returncode != 0 and "--from: names a SQLite store" in wrong.stderr
    assert "parallax:parallax@" not in again.stderr + wrong.stderr


async def test_writes_are_refused_while_the_database_is_gone_and_work_again_after(tmp_path: Path):
    """The store's connections killed under it (as a restart of PostgreSQL does): the write in flight is
    refused or made, never half-made, and the next ones work."""
    s = settings(tmp_path)
    url = await fresh_url() + "&application_name=pgt-restart"
    store = await open_store(url, spec_defaults(s))
    assert isinstance(store, PostgresStore)
    try:
        await store.create(agent({"name": "pgt-r0", "type": "claude"}, s))
        admin = await asyncpg.connect(url.replace("pgt-restart", "pgt-admin"))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pgt-restart'"
            )
        finally:
            await admin.close()
        assert killed >= 2  # the pool's and the listener's
        outcomes = await asyncio.gather(
            *(store.create(agent({"name": f"pgt-r{i}", "type": "claude"}, s)) for i in range(1, 6)),
            return_exceptions=True,
        )
        assert all(isinstance(o, Agent | StoreUnavailable) for o in outcomes), outcomes
        made = {o.name for o in outcomes if isinstance(o, Agent)}
        after = await store.create(agent({"name": "pgt-r9", "type": "claude"}, s))
        assert after.name == "pgt-r9"
        names = {a.name for a in await store.list()}
        assert names >= made | {"pgt-r0", "pgt-r9"}
        fresh = await open_store(
            url.replace("pgt-restart", "pgt-check"), spec_defaults(s)
        )  # what the database holds is what was answered
        try:
            assert {a.name for a in await fresh.list()} == names
        finally:
            await fresh.close()
    finally:
        await store.close()


async def _raw_rows_holding(url: str, values: list[str]) -> list[str]:
    """Every row of every table of the store's schema whose text holds one of ``values`` (what a dump
    of the database would show)."""
    conn = await asyncpg.connect(url)
    try:
        found = []
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        for (table,) in tables:
            for row in await conn.fetch(f'SELECT t::text AS row FROM "{table}" t'):
                found += [f"{table}: {v}" for v in values if v in row["row"]]
        return found
    finally:
        await conn.close()


async def test_postgres_rows_hold_no_secret_and_every_controller_follows_secret_writes(tmp_path: Path):
    url = await fresh_url()
    s = settings(tmp_path)
    cipher = SecretCipher.load(str(tmp_path / "secret.key"))
    first, second = [await open_store(url, spec_defaults(s), cipher=cipher) for _ in range(2)]
    changes = second.subscribe_secrets()
    try:
        await first.create(agent({"name": "pgt-sec", "type": "claude", "env": {"API_KEY": "sk-inline-9c1e"}}, s))
        await first.put_secret(Secret("pgt-anthropic", {"apiKey": "sk-secret-52ab"}), create=True)
        assert await asyncio.wait_for(changes.get(), 5) == "pgt-anthropic"
        assert (await second.get_secret("pgt-anthropic")).data == {"apiKey": "sk-secret-52ab"}
        await first.put_secret(Secret("pgt-anthropic", {"apiKey": "sk-secret-v2-77"}), create=False)
        assert await asyncio.wait_for(changes.get(), 5) == "pgt-anthropic"
        assert (await second.get_secret("pgt-anthropic")).version == 2
        assert await _until(lambda: _has(second, "pgt-sec"))
        assert (await second.get("pgt-sec")).spec.env["API_KEY"] == "sk-inline-9c1e"
        assert await _raw_rows_holding(url, ["sk-inline-9c1e", "sk-secret-52ab", "sk-secret-v2-77"]) == []
        await first.delete_secret("pgt-anthropic")
        assert await asyncio.wait_for(changes.get(), 5) == "pgt-anthropic"
        assert await second.list_secrets() == []
    finally:
        second.unsubscribe_secrets(changes)
        await first.close()
        await second.close()


async def _has(store: Store, name: str) -> bool:
    return name in {a.name for a in await store.list()}


async def test_a_postgres_store_from_before_sealing_is_sealed_at_open(tmp_path: Path):
    url = await fresh_url()
    s = settings(tmp_path)
    cipher = SecretCipher.load(str(tmp_path / "secret.key"))
    store = await open_store(url, spec_defaults(s), cipher=cipher)
    await store.create(agent({"name": "pgt-old", "type": "claude", "env": {"API_KEY": "sk-legacy-3e8f"}}, s))
    await store.close()
    conn = await asyncpg.connect(url)
    try:  # what an older controller left: plain env values in the records and the change table, no seal mark
        for table, column in (("parallax_agents", "manifest"), ("parallax_changes", "body")):
            for row in await conn.fetch(f"SELECT ctid, {column} AS text FROM {table} WHERE {column} LIKE '%API_KEY%'"):
                body = json.loads(row["text"])
                body["spec"]["env"] = {"API_KEY": "sk-legacy-3e8f"}
                await conn.execute(f"UPDATE {table} SET {column} = $1 WHERE ctid = $2", json.dumps(body), row["ctid"])
        await conn.execute("DELETE FROM parallax_meta WHERE key = 'sealedKey'")
    finally:
        await conn.close()
    assert await _raw_rows_holding(url, ["sk-legacy-3e8f"])
    reopened = await open_store(url, spec_defaults(s), cipher=cipher)
    try:
        assert (await reopened.get("pgt-old")).spec.env["API_KEY"] == "sk-legacy-3e8f"
        assert await _raw_rows_holding(url, ["sk-legacy-3e8f"]) == []
    finally:
        await reopened.close()
