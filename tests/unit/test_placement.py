"""spec.placement at admission: Swarm's constraint grammar, checked so that a typo is a 422 naming the
constraint rather than an agent Pending for ever (Swarm itself accepts an unknown key, which no node
matches), and refused by the local runtime, which has one host."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.admission.admit import AdmissionError, admit
from controller.admission.policy import placement_problem
from controller.config import Settings


@pytest.mark.parametrize(
    "constraint",
    [
        "node.hostname==worker-1",
        "node.role != manager",
        "node.labels.zone==eu-west-1",
        "engine.labels.storage==ssd",
        "node.platform.arch==x86_64",
        "node.id==abc123",
    ],
)
def test_constraints_swarm_understands_are_admitted(constraint: str) -> None:
    assert placement_problem(constraint) is None


@pytest.mark.parametrize(
    ("constraint", "why"),
    [
        ("node.hostname=worker-1", "no operator"),
        ("node.colour==blue", "unknown constraint key"),
        ("labels.zone==eu", "unknown constraint key"),
        ("node.role==boss", "manager or worker"),
        ("node.labels.zone==", "no value"),
        ("node.labels.a==b==c", "more than one operator"),
    ],
)
def test_constraints_no_node_could_meet_are_refused_saying_why(constraint: str, why: str) -> None:
    assert why in (placement_problem(constraint) or "")


def test_swarm_admits_placement_and_keeps_it_in_the_spec(tmp_path: Path) -> None:
    settings = Settings(store_path=str(tmp_path / "agents.db"), runtime="swarm")
    agent, _ = admit({"name": "pl-a", "type": "claude", "placement": {"constraints": ["node.role==worker"]}}, settings)
    assert agent.spec.placement_constraints == ("node.role==worker",)
    assert agent.spec.to_dict()["placement"] == {"constraints": ["node.role==worker"]}


def test_swarm_refuses_a_bad_constraint_at_its_index(tmp_path: Path) -> None:
    settings = Settings(store_path=str(tmp_path / "agents.db"), runtime="swarm")
    body = {"name": "pl-b", "type": "claude", "placement": {"constraints": ["node.role==worker", "zone==eu"]}}
    with pytest.raises(AdmissionError) as refused:
        admit(body, settings)
    assert [e.field for e in refused.value.errors] == ["placement.constraints[1]"]
    assert not refused.value.forbidden


def test_the_local_runtime_refuses_placement(tmp_path: Path) -> None:
    settings = Settings(store_path=str(tmp_path / "agents.db"))
    with pytest.raises(AdmissionError) as refused:
        admit({"name": "pl-c", "type": "claude", "placement": {"constraints": ["node.role==worker"]}}, settings)
    (error,) = refused.value.errors
    assert error.field == "placement.constraints" and "PARALLAX_RUNTIME=swarm" in error.message
    # no constraints is no placement: the local runtime admits it
    agent, _ = admit({"name": "pl-d", "type": "claude", "placement": {"constraints": []}}, settings)
    assert agent.spec.placement_constraints == ()


def test_placement_is_schema_checked(tmp_path: Path) -> None:
    settings = Settings(store_path=str(tmp_path / "agents.db"), runtime="swarm")
    for placement in ({"constraints": "node.role==worker"}, {"preferences": []}, {"constraints": [""]}):
        with pytest.raises(AdmissionError):
            admit({"name": "pl-e", "type": "claude", "placement": placement}, settings)
