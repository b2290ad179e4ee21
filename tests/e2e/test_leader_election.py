"""Several ``parallax serve`` on one PostgreSQL store (real processes, the real Docker daemon): one leads
and reconciles, the others serve the API; a killed leader is replaced within the lease bound, and a
paused leader whose lease ran out writes nothing to Docker after it wakes up (fencing)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.postgres import base_url, fresh_url
from tests.server_process import PARALLAX, Server, free_port, remove_instance, server_environment, wait_running

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

LEASE, RENEW, RETRY = 3.0, 2.0, 0.5
"""Short durations so the tests are quick; the defaults (15/10/2 s) keep the same order."""

MakeCluster = Callable[..., Coroutine[Any, Any, list[Server]]]


@pytest.fixture
async def cluster(tmp_path: Path, docker_daemon: None) -> AsyncIterator[MakeCluster]:
    servers: list[Server] = []
    url = await fresh_url()
    env, settings = server_environment(
        tmp_path,
        PARALLAX_STORE=url,
        PARALLAX_LEASE_DURATION=str(LEASE),
        PARALLAX_RENEW_DEADLINE=str(RENEW),
        PARALLAX_RETRY_PERIOD=str(RETRY),
        PARALLAX_RESYNC_SECONDS="1",
    )

    async def start(count: int, via_port: int | None = None) -> list[Server]:
        store = url if via_port is None else through(url, via_port)
        for _ in range(count):
            name = f"pgt-{chr(ord('a') + len(servers))}"
            own = {"PORT": str(free_port()), "PARALLAX_IDENTITY": name, "PARALLAX_STORE": store}
            server = Server({**env, **own}, tmp_path / f"{name}.log")
            server.identity = name  # type: ignore[attr-defined]
            await server.start()
            servers.append(server)
        return servers

    start.instance = settings.instance  # type: ignore[attr-defined]
    yield start
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            with_signal(server, signal.SIGCONT)
            server.kill()
    remove_instance(settings.instance)  # the next test uses the same agent (so container) names


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by 127.0.0.1:``port`` (the partition proxy)."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{port}"))


def with_signal(server: Server, sig: int) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, sig)


async def leader_view(server: Server) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(server.url + "/readyz", timeout=2) as resp:
            return dict((await resp.json())["leader"])
    except (aiohttp.ClientError, TimeoutError):
        return None


async def master_status(server: Server) -> float:
    async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("leader_election_master_status{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no leader_election_master_status series:\n" + text[:2000])


async def the_leader(servers: list[Server], timeout: float) -> Server:
    """The one server that leads (waiting up to ``timeout``); fails if two do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leading = [s for s in servers if (await leader_view(s) or {}).get("leading")]
        assert len(leading) <= 1, "two servers lead at once"
        if leading:
            return leading[0]
        await asyncio.sleep(0.1)
    raise AssertionError("no server leads:\n" + "\n".join(s.output()[-3000:] for s in servers))


def containers(instance: str) -> list[tuple[str, str]]:
    """(container id, agent) of every container of the test instance."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=parallax.instance={instance}",
            "--format",
            '{{.ID}} {{.Label "parallax.agent"}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return [tuple(line.split(" ", 1)) for line in out if line.strip()]  # type: ignore[misc]


async def test_one_server_leads_and_a_standby_takes_over_when_it_is_killed(cluster: MakeCluster):
    servers = await cluster(2)
    leader = await the_leader(servers, LEASE + 2)
    standby = next(s for s in servers if s is not leader)
    assert [await master_status(s) for s in (leader, standby)] == [1.0, 0.0]
    deadline = time.monotonic() + 4 * RETRY + 2  # the standby reads the lease at its first retry
    view = await leader_view(standby)
    while view is None or view["holder"] is None:
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.1)
        view = await leader_view(standby)
    assert view["leading"] is False
    assert view["holder"]["identity"] == leader.identity  # type: ignore[attr-defined]

    # The standby serves the whole API: a write through it is reconciled by the leader.
    status, body = await standby.call("POST", "/agents", {"name": "pgt-before", "type": "claude"})
    assert status == 201, body
    before = await wait_running(standby, "pgt-before")

    shown = subprocess.run([PARALLAX, "leader", "--server", standby.url], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"leader: {leader.identity}" in shown.stdout and "standby" in shown.stdout  # type: ignore[attr-defined]

    killed = time.monotonic()
    leader.kill()
    new = await the_leader([standby], LEASE + 2)
    took = time.monotonic() - killed
    assert new is standby and took <= LEASE + 2, took
    assert await master_status(standby) == 1.0

    status, body = await standby.call("POST", "/agents", {"name": "pgt-after", "type": "claude"})
    assert status == 201, body
    await wait_running(standby, "pgt-after")
    adopted = await wait_running(standby, "pgt-before")
    assert adopted["status"]["containerId"] == before["status"]["containerId"]  # adopted, not replaced
    assert adopted["status"].get("restartCount", 0) == before["status"].get("restartCount", 0)
    agents = sorted(agent for _, agent in containers(cluster.instance))  # type: ignore[attr-defined]
    assert agents == ["pgt-after", "pgt-before"], agents  # one container each: nobody made a second


async def test_a_paused_leader_whose_lease_ran_out_does_not_act_after_it_resumes(cluster: MakeCluster):
    servers = await cluster(2)
    old = await the_leader(servers, LEASE + 2)
    standby = next(s for s in servers if s is not old)
    status, body = await standby.call("POST", "/agents", {"name": "pgt-kept", "type": "claude"})
    assert status == 201, body
    await wait_running(standby, "pgt-kept")

    with_signal(old, signal.SIGSTOP)  # a partition, or a process frozen past its lease
    new = await the_leader([standby], LEASE + 2)
    assert new is standby
    # While the old leader sleeps, an agent it never heard of is created; to its stale view that
    # agent's container is an orphan to remove, and pgt-kept's deletion marks nothing it knows.
    status, body = await standby.call("POST", "/agents", {"name": "pgt-new", "type": "claude"})
    assert status == 201, body
    created = await wait_running(standby, "pgt-new")
    before = sorted(containers(cluster.instance))  # type: ignore[attr-defined]

    since = f"{time.time():.9f}"  # to the nanosecond: a whole second back would see the last create
    events = subprocess.Popen(
        [
            "docker",
            "events",
            "--since",
            since,
            "--format",
            "{{.Action}} {{.Actor.ID}}",
            "--filter",
            "type=container",
            "--filter",
            f"label=parallax.instance={cluster.instance}",  # type: ignore[attr-defined]
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with_signal(old, signal.SIGCONT)
        await asyncio.sleep(LEASE + 1)  # its resync (1 s) and queued work have run by now
    finally:
        events.terminate()
        seen, _ = events.communicate(timeout=5)
    acted = [
        line for line in seen.splitlines() if line.split(" ", 1)[0] in ("create", "destroy", "kill", "stop", "die")
    ]
    assert acted == [], acted
    assert sorted(containers(cluster.instance)) == before  # type: ignore[attr-defined]
    assert (await leader_view(old) or {}).get("leading") is False
    assert await master_status(old) == 0.0 and await master_status(standby) == 1.0
    _, again = await standby.call("GET", "/agents/pgt-new")
    assert again["status"]["containerId"] == created["status"]["containerId"]
    assert "stops leading" in old.output() or "NotLeader" in old.output() or "does not hold" in old.output()


class Partition:
    """A TCP proxy to PostgreSQL that can stop forwarding: the connections through it stay open and
    go silent, as when a network partition cuts the leader off from the database."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.open = asyncio.Event()
        self.open.set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self.open.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


async def test_a_leader_cut_off_from_the_database_stops_acting_before_its_lease_runs_out(
    cluster: MakeCluster, tmp_path: Path
):
    partition = Partition(urllib.parse.urlsplit(base_url()).port or 5432)
    await partition.start()
    try:
        (old,) = await cluster(1, via_port=partition.port)
        assert (await the_leader([old], LEASE + 2)) is old
        servers = await cluster(1)
        standby = servers[-1]
        status, body = await standby.call("POST", "/agents", {"name": "pgt-kept", "type": "claude"})
        assert status == 201, body
        await wait_running(standby, "pgt-kept")

        partition.open.clear()
        cut = time.monotonic()
        assert (await the_leader([standby], LEASE + RETRY + 3)) is standby
        assert time.monotonic() - cut <= LEASE + RETRY + 3
        # The old leader cannot see this agent (its view of the store is frozen): to it, the agent's
        # container is an orphan of its instance, which a leader that still acted would remove.
        status, body = await standby.call("POST", "/agents", {"name": "pgt-unseen", "type": "claude"})
        assert status == 201, body
        created = await wait_running(standby, "pgt-unseen")
        await asyncio.sleep(3)  # several of the old leader's resyncs (1 s)
        _, again = await standby.call("GET", "/agents/pgt-unseen")
        assert again["status"]["containerId"] == created["status"]["containerId"]
        assert again["status"].get("restartCount", 0) == 0
        agents = sorted(agent for _, agent in containers(cluster.instance))  # type: ignore[attr-defined]
        assert agents == ["pgt-kept", "pgt-unseen"], agents
        assert await master_status(old) == 0.0
        assert "stops leading" in old.output()
    finally:
        partition.open.set()
        await partition.close()


async def test_the_leader_killed_in_the_middle_of_an_apply_leaves_nothing_lost_or_doubled(cluster: MakeCluster):
    servers = await cluster(2)
    leader = await the_leader(servers, LEASE + 2)
    standby = next(s for s in servers if s is not leader)
    names = [f"pgt-many-{i}" for i in range(30)]
    status, body = await standby.call("POST", "/apply", [{"name": n, "type": "claude"} for n in names])
    assert status == 200, body

    async def phases() -> dict[str, dict[str, Any]]:
        _, listed = await standby.call("GET", "/agents")
        return {a["metadata"]["name"]: a["status"] for a in listed["items"]}

    deadline = time.monotonic() + 30
    while sum(s.get("phase") == "Running" for s in (await phases()).values()) < 3:
        assert time.monotonic() < deadline, await phases()
        await asyncio.sleep(0.05)
    leader.kill()  # mid-way through creating and starting the rest
    assert (await the_leader([standby], LEASE + 2)) is standby
    deadline = time.monotonic() + 60
    now = await phases()
    while not all(s.get("phase") == "Running" for s in now.values()):
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.2)
        now = await phases()
    assert sorted(now) == sorted(names)  # every acknowledged write is there
    assert all(s.get("restartCount", 0) == 0 for s in now.values()), now  # no needless restarts
    made = containers(cluster.instance)  # type: ignore[attr-defined]
    assert sorted(agent for _, agent in made) == sorted(names), made  # one container each
    for status in now.values():  # and each agent's status names the one it has
        assert any(status["containerId"].startswith(short) for short, _ in made), status
