"""``GET /metrics`` against real reconciles: the counters move, and agent names stay off shared series."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import aiodocker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.model.agent import Agent, AgentSpec, Metadata, Resources
from controller.observe.logging_setup import make_handler
from controller.observe.metrics import AgentTracker
from controller.store.interface import Change
from tests.conftest import StartController
from tests.harness import Controller, docker_cli, running, wait_for

pytestmark = pytest.mark.docker

PER_AGENT = {"parallax_agent_cpu_seconds_total", "parallax_agent_memory_bytes"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(controller: Controller) -> tuple[str, Samples]:
    assert controller.session is not None
    async with controller.session.get(controller.base_url + "/metrics") as resp:
        assert resp.status == 200
        content_type = resp.headers["Content-Type"]
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return content_type, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """Sum of the samples named ``metric`` whose labels include ``labels`` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


async def test_counters_move_after_real_reconciles_and_agent_names_only_label_per_agent_series(
    controller: Controller,
):
    content_type, before = await scrape(controller)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type

    status, body = await controller.request("POST", "/agents", {"name": "met-counted", "type": "claude"})
    assert status == 201, body
    await controller.wait_agent("met-counted", running)

    async def per_agent_series_present() -> Samples | None:
        _, samples = await scrape(controller)
        has_memory = value(samples, "parallax_agent_memory_bytes", agent="met-counted") > 0
        return samples if has_memory and value(samples, "parallax_agent_start_seconds_count") >= 1 else None

    after: Samples = await wait_for(per_agent_series_present, timeout=30, what="per-agent memory series")

    for name, labels in [
        ("controller_runtime_reconcile_total", {"controller": "agent"}),
        ("workqueue_adds_total", {"name": "agent"}),
        ("workqueue_work_duration_seconds_count", {"name": "agent"}),
        ("workqueue_queue_duration_seconds_count", {"name": "agent"}),
        ("controller_runtime_reconcile_time_seconds_count", {"controller": "agent"}),
        ("parallax_docker_api_seconds_count", {"operation": "create_container"}),
        ("parallax_docker_api_seconds_count", {"operation": "start"}),
        ("parallax_docker_events_total", {"type": "container"}),
    ]:
        assert value(after, name, **labels) > value(before, name, **labels), (name, labels)

    assert value(after, "parallax_agents", phase="Running", type="claude") == 1
    assert value(after, "parallax_agents", phase="Pending") == 0
    assert value(after, "parallax_agent_start_seconds_count") == 1
    assert 0 < value(after, "parallax_agent_start_seconds_sum") < 30
    assert value(after, "controller_runtime_max_concurrent_reconciles") == controller.settings.workers
    assert value(after, "parallax_docker_up") == 1
    assert value(after, "parallax_agent_cpu_seconds_total", agent="met-counted") >= 0
    assert value(after, "parallax_build_info") == 1
    assert value(after, "process_resident_memory_bytes") > 0

    for (name, labels), _ in after.items():
        if any("met-counted" in label_value for _, label_value in labels):
            assert name in PER_AGENT, f"{name} carries the agent name as a label: {dict(labels)}"
    assert all(set(labels) == {"agent"} for name in PER_AGENT for labels in series(after, name))


async def test_a_killed_agent_counts_one_restart_with_its_reason(controller: Controller):
    await controller.request("POST", "/agents", {"name": "met-killed", "type": "codex"})
    await controller.wait_agent("met-killed", running)
    _, before = await scrape(controller)

    code, out = await docker_cli("kill", "parallax-agent-met-killed")
    assert code == 0, out
    await controller.wait_agent("met-killed", lambda a: running(a) and a["status"]["restartCount"] == 1)

    async def restart_counted() -> Samples | None:
        _, samples = await scrape(controller)
        return (
            samples
            if value(samples, "parallax_agent_restarts_total") > value(before, "parallax_agent_restarts_total")
            else None
        )

    after: Samples = await wait_for(restart_counted, timeout=10, what="restart counter")
    assert (
        value(after, "parallax_agent_restarts_total", reason="Error")
        - value(before, "parallax_agent_restarts_total", reason="Error")
        == 1
    )
    assert value(after, "parallax_agent_restarts_total", reason="OOMKilled") == 0
    assert value(after, "parallax_docker_events_total", type="container") > value(
        before, "parallax_docker_events_total", type="container"
    )


async def test_failing_reconciles_count_errors_and_docker_error_codes(controller: Controller):
    _, before = await scrape(controller)
    agent = {"name": "met-noimage", "type": "custom", "image": "parallax-test/no-such-image:latest"}
    status, body = await controller.request("POST", "/agents", agent)
    assert status == 201, body
    await controller.wait_agent(
        "met-noimage", lambda a: (a["status"].get("error") or {}).get("code") == "IMAGE_NOT_FOUND"
    )

    async def error_counted() -> Samples | None:
        _, samples = await scrape(controller)
        errors = value(samples, "controller_runtime_reconcile_errors_total", controller="agent")
        return samples if errors > value(before, "controller_runtime_reconcile_errors_total") else None

    after: Samples = await wait_for(error_counted, timeout=10, what="reconcile error counter")
    assert value(after, "controller_runtime_reconcile_total", result="error") > value(
        before, "controller_runtime_reconcile_total", result="error"
    )
    assert value(after, "parallax_agents", phase="Pending", type="custom") == 1
    assert value(after, "workqueue_retries_total", name="agent") > value(before, "workqueue_retries_total")
    assert value(after, "parallax_agent_start_seconds_count") == 0


async def test_agent_metrics_off_leaves_out_the_per_agent_series(start_controller: StartController):
    controller = await start_controller(agent_metrics=False)
    await controller.request("POST", "/agents", {"name": "met-quiet", "type": "gemini"})
    await controller.wait_agent("met-quiet", running)
    _, samples = await scrape(controller)
    assert value(samples, "parallax_agents", phase="Running", type="gemini") == 1
    for name in PER_AGENT:
        assert series(samples, name) == []
    assert not any("met-quiet" in v for (_, labels) in samples for _, v in labels)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = make_handler("json", stream)
    logger = logging.getLogger("parallax")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


async def test_json_reconcile_log_lines_carry_the_agent_and_a_reconcile_id(
    controller: Controller, docker: aiodocker.Docker, json_log: io.StringIO
):
    await controller.request("POST", "/agents", {"name": "met-logged", "type": "aider"})
    await controller.wait_agent("met-logged", running)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    started = [entry for entry in lines if "started container" in entry["msg"] and entry.get("agent") == "met-logged"]
    assert started, lines
    entry = started[0]
    assert entry["level"] == "info" and entry["logger"].startswith("parallax.")
    assert len(entry["reconcileID"]) == 16
    assert entry["time"].endswith("Z")


# The change-feed arithmetic behind parallax_agent_start_seconds, on hand-made changes (no Docker).


def _agent(rv: int, generation: int, status: dict[str, object], deleted: bool = False) -> Agent:
    return Agent(
        Metadata(
            "met-fed",
            uid="u1",
            generation=generation,
            resource_version=rv,
            creation_timestamp="2026-01-01T00:00:00Z",
            deletion_timestamp="2026-01-01T00:01:00Z" if deleted else None,
        ),
        AgentSpec(type="claude", resources=Resources("64m", 0.5, 64), network="n"),
        dict(status),
    )


def _follow(*steps: tuple[str, bool, Agent, float]) -> tuple[list[float], list[tuple[str, int]], AgentTracker]:
    started: list[float] = []
    restarts: list[tuple[str, int]] = []
    tracker = AgentTracker(on_restart=lambda r, n: restarts.append((r, n)), on_started=started.append)
    for kind, spec_changed, agent, now in steps:
        tracker.apply(Change(kind, agent, spec_changed), now)  # type: ignore[arg-type]
    return started, restarts, tracker


def test_start_time_runs_from_accepted_spec_to_the_new_container_running():
    running = {"phase": "Running", "observedGeneration": 1, "containerId": "c1", "startedAt": "t1"}
    recreated = {**running, "observedGeneration": 2, "containerId": "c2"}  # recorded before it started
    started, _, tracker = _follow(
        ("ADDED", True, _agent(1, 1, {"phase": "Pending"}), 100.0),
        ("MODIFIED", False, _agent(2, 1, {"phase": "Pending", "observedGeneration": 1, "containerId": "c1"}), 100.5),
        ("MODIFIED", False, _agent(3, 1, running), 101.25),
        ("MODIFIED", True, _agent(4, 2, running), 200.0),
        ("MODIFIED", False, _agent(5, 2, recreated), 200.5),
        ("MODIFIED", False, _agent(6, 2, {**recreated, "startedAt": "t2"}), 202.0),
    )
    assert started == [1.25, 2.0]
    assert tracker.phase_counts() == {("Running", "claude"): 1}


def test_a_spec_change_that_keeps_the_container_and_stale_changes_count_nothing():
    running = {"phase": "Running", "observedGeneration": 1, "containerId": "c1", "startedAt": "t1", "restartCount": 0}
    killed = {**running, "restartCount": 1, "startedAt": "t2", "lastState": {"reason": "OOMKilled"}}
    started, restarts, tracker = _follow(
        ("MODIFIED", False, _agent(3, 1, running), 10.0),
        ("MODIFIED", True, _agent(4, 2, running), 11.0),
        ("MODIFIED", False, _agent(5, 2, {**running, "observedGeneration": 2}), 12.0),
        ("MODIFIED", False, _agent(6, 2, {**killed, "observedGeneration": 2}), 13.0),
        ("MODIFIED", False, _agent(5, 2, running), 14.0),
        ("DELETED", True, _agent(7, 2, killed, deleted=True), 15.0),
    )
    assert started == []
    assert restarts == [("OOMKilled", 1)]
    assert len(tracker) == 0
