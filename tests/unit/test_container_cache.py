"""The runtime cache's rules (``controller.runtime.docker.cache``), with an inspect function of the test's."""

from __future__ import annotations

import asyncio

from controller.runtime.docker.cache import ContainerCache, Listed
from controller.runtime.interface import Instance


class Engine:
    """What "Docker" answers to an inspect: a state per container id; counts the inspections."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.inspected: list[str] = []
        self.gate: asyncio.Event | None = None

    async def inspect(self, container_id: str) -> Instance | None:
        self.inspected.append(container_id)
        state = self.states.get(container_id)  # read when asked, answered maybe later
        if self.gate is not None:
            await self.gate.wait()
        if state is None:
            return None
        return Instance(
            id=container_id,
            name=f"c-{container_id}",
            agent="a",
            uid="u",
            config_hash="h",
            state=state,
            networks=(f"net-{container_id}",),
        )


def cache_of(engine: Engine, sizes: list[int] | None = None) -> ContainerCache:
    return ContainerCache(engine.inspect, on_size=(sizes.append if sizes is not None else lambda n: None))


async def test_a_relist_inspects_each_container_once_then_reads_are_free() -> None:
    engine = Engine()
    engine.states = {"1": "running", "2": "exited"}
    sizes: list[int] = []
    cache = cache_of(engine, sizes)
    assert cache.replace([Listed("1", "a"), Listed("2", "a"), Listed("3", "b")]) == {"a", "b"}
    assert cache.synced and len(cache) == 3 and sizes[-1] == 3

    first = await cache.instances("a")
    again = await cache.instances("a")

    assert sorted(i.state for i in first) == ["exited", "running"] == sorted(i.state for i in again)
    assert sorted(engine.inspected) == ["1", "2"]  # the second read asked nothing
    assert await cache.instances("b") == []  # "3" was gone by the time it was inspected
    assert cache.agents() == {"a"} and sizes[-1] == 2


async def test_an_event_makes_the_next_read_inspect_that_container_only() -> None:
    engine = Engine()
    engine.states = {"1": "running", "2": "running"}
    cache = cache_of(engine)
    cache.replace([Listed("1", "a"), Listed("2", "a")])
    await cache.instances("a")
    engine.inspected.clear()

    engine.states["2"] = "exited"
    cache.changed("2")

    assert {i.id: i.state for i in await cache.instances("a")} == {"1": "running", "2": "exited"}
    assert engine.inspected == ["2"]


async def test_a_new_container_needs_its_agent_and_a_destroyed_one_is_forgotten() -> None:
    engine = Engine()
    engine.states = {"9": "created"}
    cache = cache_of(engine)
    cache.replace([])
    cache.changed("9")  # an event without the agent's label: nothing to file it under
    assert len(cache) == 0
    cache.changed("9", "a")
    assert [i.id for i in await cache.instances("a")] == ["9"]
    cache.forget("9")
    assert await cache.instances("a") == [] and cache.agents() == set()


async def test_a_change_during_an_inspection_is_not_hidden_by_the_older_answer() -> None:
    engine = Engine()
    engine.states = {"1": "running"}
    cache = cache_of(engine)
    cache.replace([Listed("1", "a")])
    engine.gate = asyncio.Event()
    reading = asyncio.create_task(cache.instances("a"))
    await asyncio.sleep(0)  # the inspection has read "running" and waits
    engine.states["1"] = "exited"
    cache.changed("1")  # the die event arrives meanwhile
    engine.gate.set()
    assert [i.state for i in await reading] == ["running"]  # what was true when asked

    assert [i.state for i in await cache.instances("a")] == ["exited"]  # the event was not lost
    assert engine.inspected == ["1", "1"]


async def test_a_container_forgotten_during_its_inspection_stays_forgotten() -> None:
    engine = Engine()
    engine.states = {"1": "running"}
    cache = cache_of(engine)
    cache.replace([Listed("1", "a")])
    engine.gate = asyncio.Event()
    reading = asyncio.create_task(cache.instances("a"))
    await asyncio.sleep(0)
    cache.forget("1")  # removed by the controller while the inspection ran
    engine.gate.set()
    assert await reading == []
    assert len(cache) == 0


async def test_a_relist_drops_what_is_gone_and_marks_the_rest_changed() -> None:
    engine = Engine()
    engine.states = {"1": "running", "2": "running"}
    cache = cache_of(engine)
    cache.replace([Listed("1", "a"), Listed("2", "b")])
    await cache.instances("a")
    await cache.instances("b")
    engine.inspected.clear()
    cache.unsynced()
    assert not cache.synced

    engine.states["1"] = "exited"  # changed while no event stream was open
    del engine.states["2"]
    cache.replace([Listed("1", "a")])

    assert cache.synced and cache.agents() == {"a"}
    assert [i.state for i in await cache.instances("a")] == ["exited"]
    assert engine.inspected == ["1"]


async def test_fresh_inspects_now_and_adopts_a_container_it_did_not_know() -> None:
    engine = Engine()
    engine.states = {"1": "running", "7": "running"}
    cache = cache_of(engine)
    cache.replace([Listed("1", "a")])
    await cache.instances("a")
    engine.states["1"] = "exited"

    found = await cache.fresh("1")  # even though no event marked it changed
    assert found is not None and found.state == "exited"
    adopted = await cache.fresh("7")
    assert adopted is not None and {i.id for i in await cache.instances("a")} == {"1", "7"}
    assert await cache.fresh("nope") is None and len(cache) == 2


async def test_a_removed_network_marks_the_containers_that_were_on_it() -> None:
    engine = Engine()
    engine.states = {"1": "running", "2": "running"}
    cache = ContainerCache(engine.inspect)
    cache.replace([Listed("1", "a"), Listed("2", "b")])
    await cache.instances("a")
    await cache.instances("b")
    engine.inspected.clear()
    cache.changed_on_network("not-theirs")
    await cache.instances("a")
    assert engine.inspected == []
    cache.changed_on_network("net-2")
    await cache.instances("a")
    await cache.instances("b")
    assert engine.inspected == ["2"]


async def test_a_periodic_relist_keeps_what_it_knows_and_verify_finds_a_missed_event() -> None:
    engine = Engine()
    engine.states = {"1": "running", "2": "running", "3": "running"}
    cache = ContainerCache(engine.inspect)
    cache.replace([Listed("1", "a"), Listed("2", "a")])
    await cache.instances("a")
    engine.inspected.clear()

    engine.states["2"] = "exited"  # Docker never sent the die event
    cache.replace([Listed("1", "a"), Listed("2", "a"), Listed("3", "a")], missed_events=False)
    assert {i.id: i.state for i in await cache.instances("a")} == {"1": "running", "2": "running", "3": "running"}
    assert engine.inspected == ["3"]  # only the new one: the others are believed until verified

    assert sorted(cache.unverified()) == ["1", "2", "3"]
    assert [cid for cid in sorted(cache.unverified()) if await cache.verify(cid)] == ["2"]
    assert {i.id: i.state for i in await cache.instances("a")} == {"1": "running", "2": "exited", "3": "running"}
