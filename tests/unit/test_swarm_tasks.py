"""Swarm services and tasks as instances (controller.runtime.swarm.tasks), and what decide makes of the
two states a scheduler adds: ``starting`` (Pending, with the scheduler's word) and ``lost`` (its node is
gone: started again elsewhere, not counted as a restart)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from controller.admission.admit import admit
from controller.config import Settings
from controller.model.errors import IMAGE_NOT_FOUND, RESOURCE_LIMIT
from controller.reconcile.decide import Facts, decide
from controller.runtime.swarm.runtime import SwarmRuntime
from controller.runtime.swarm.tasks import classify_task_error, instance_of

SETTINGS = Settings(store_path="/nonexistent/agents.db", runtime="swarm")
NODES = {
    "n2": {"ID": "n2", "Description": {"Hostname": "worker-2"}, "Status": {"State": "ready"}},
    "n3": {"ID": "n3", "Description": {"Hostname": "worker-3"}, "Status": {"State": "down"}},
}


def service(replicas: int = 1) -> dict[str, Any]:
    labels = {"parallax.agent": "sw", "parallax.agent.uid": "uid-1", "parallax.network": "net"}
    return {
        "ID": "svc1",
        "Spec": {"Name": "parallax-agent-sw", "Labels": labels, "Mode": {"Replicated": {"Replicas": replicas}}},
    }


def task(
    state: str, desired: str = "running", node: str = "n2", created: str = "2026-01-01T00:00:01Z", **status: Any
) -> dict[str, Any]:
    return {
        "ID": f"t-{created}",
        "ServiceID": "svc1",
        "NodeID": node,
        "CreatedAt": created,
        "DesiredState": desired,
        "Status": {"State": state, "Timestamp": "2026-01-01T00:00:02Z", **status},
    }


def test_the_newest_task_is_the_instance_and_its_node_is_shown() -> None:
    old = task("complete", "shutdown", created="2026-01-01T00:00:00Z")
    found = instance_of(service(), [old, task("running")], NODES)
    assert (found.state, found.node, found.id, found.agent) == ("running", "worker-2", "svc1", "sw")


def test_task_states_map_onto_instance_states() -> None:
    exited = task("failed", "shutdown", ContainerStatus={"ExitCode": 3}, Err="task: non-zero exit (3)")
    assert (instance_of(service(), [exited], NODES).state, instance_of(service(), [exited], NODES).exit_code) == (
        "exited",
        3,
    )
    assert instance_of(service(), [task("pending")], NODES).state == "starting"
    assert instance_of(service(), [task("assigned", "ready")], NODES).state == "starting"  # waiting in an update
    assert instance_of(service(), [], NODES).state == "starting"
    assert instance_of(service(0), [task("shutdown", "shutdown")], NODES).state == "exited"
    assert instance_of(service(), [task("running", "shutdown", node="n3")], NODES).state == "lost"
    rejected = instance_of(service(), [task("rejected", "shutdown", Err="No such image: x:latest")], NODES)
    assert (rejected.state, rejected.error_code) == ("created", IMAGE_NOT_FOUND)


def test_scheduler_errors_are_classified() -> None:
    assert classify_task_error("no suitable node (insufficient resources on 2 nodes)") == RESOURCE_LIMIT
    assert classify_task_error("No such image: parallax/agent-claude:latest") == IMAGE_NOT_FOUND


def agent() -> Any:
    record = admit({"name": "sw", "type": "claude"}, SETTINGS)[0]
    record.metadata.uid = "uid-1"
    return record


def test_starting_is_pending_with_the_schedulers_word_and_lost_is_started_again() -> None:
    record = agent()
    desired = SwarmRuntime(SETTINGS).render(record)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    facts = Facts(network_ready=True)
    waiting = task("pending", Err="no suitable node (insufficient resources on 2 nodes)")
    current = instance_of(service(), [waiting], NODES)
    current = dataclasses.replace(current, config_hash=desired.config_hash)
    decision = decide("sw", record, [current], desired, now, facts)
    assert decision.operations == ()
    assert decision.status is not None and decision.status["phase"] == "Pending"
    assert decision.status["error"]["code"] == RESOURCE_LIMIT

    lost = instance_of(service(), [task("running", "shutdown", node="n3")], NODES)
    lost = dataclasses.replace(lost, config_hash=desired.config_hash)
    decision = decide("sw", record, [lost], desired, now, facts)
    assert [(op.kind, op.event.reason if op.event else "") for op in decision.operations] == [("start", "NodeLost")]
    assert decision.status is not None and decision.status.get("restartCount", 0) == 0


def test_a_changed_spec_updates_the_service_in_place() -> None:
    record = agent()
    desired = SwarmRuntime(SETTINGS).render(record)
    current = instance_of(service(), [task("running")], NODES)  # an older hash: none
    decision = decide("sw", record, [current], desired, datetime(2026, 1, 1, tzinfo=UTC), Facts(network_ready=True))
    assert [op.kind for op in decision.operations] == ["update"]
