"""The apply plan: which steps the reconciler will take for a change, and the cause of each."""

from __future__ import annotations

from typing import Any

from controller.admission.admit import admit
from controller.apply.plan import diff, plan_apply, plan_delete, show
from controller.config import Settings
from controller.model.agent import Agent
from controller.runtime.docker.render import ANNOTATION_RESTARTED_AT
from controller.runtime.docker.runtime import DockerRuntime

SETTINGS = Settings(store_path="/nonexistent/agents.db")
RENDER = DockerRuntime(SETTINGS).render


def agent(**spec: Any) -> Agent:
    labels = spec.pop("labels", {})
    annotations = spec.pop("annotations", {})
    body = {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": "planned", "labels": labels, "annotations": annotations},
        "spec": {"type": "claude", **spec},
    }
    return admit(body, SETTINGS)[0]


def stored(submitted: Agent, *, container: bool = True) -> Agent:
    record = submitted.copy()
    record.metadata.uid = "uid-1"
    record.metadata.generation = 3
    record.status = {"phase": "Running", "containerId": "c0ffee"} if container else {"phase": "Pending"}
    return record


def steps(plan: Any) -> list[str]:
    return [str(step) for step in plan.steps]


def test_new_agent_is_created_with_its_image() -> None:
    plan = plan_apply(None, agent(), RENDER)
    assert plan.outcome == "created"
    assert steps(plan) == ["create: new agent (image parallax/agent-claude:latest)"]
    assert plan.steps[0].target == "container parallax-agent-planned"


def test_new_suspended_agent_starts_no_container() -> None:
    plan = plan_apply(None, agent(suspend=True), RENDER)
    assert plan.outcome == "created"
    assert "no container is started" in steps(plan)[0]


def test_identical_agent_is_unchanged_with_no_steps() -> None:
    current = stored(agent(resources={"memory": "512m"}))
    plan = plan_apply(current, agent(resources={"memory": "512m"}), RENDER)
    assert plan.outcome == "unchanged"
    assert plan.steps == ()


def test_memory_change_recreates_with_old_and_new_values() -> None:
    plan = plan_apply(stored(agent(resources={"memory": "512m"})), agent(resources={"memory": "1g"}), RENDER)
    assert plan.outcome == "configured"
    assert steps(plan) == ["recreate: resources.memory changed 512m -> 1g"]
    assert plan.steps[0].target == "container parallax-agent-planned"


def test_env_changes_name_the_variable_and_never_the_value() -> None:
    before = stored(agent(env={"API_KEY": "sk-old-secret", "GONE": "bye-secret"}))
    plan = plan_apply(before, agent(env={"API_KEY": "sk-new-secret", "NEW": "hello-secret"}), RENDER)
    text = " ".join(steps(plan))
    assert text == "recreate: env.API_KEY changed, env.GONE removed, env.NEW added"
    assert "secret" not in str(plan.to_dict())


def test_restart_policy_change_updates_the_record_and_keeps_the_container() -> None:
    plan = plan_apply(stored(agent()), agent(restartPolicy="Never"), RENDER)
    assert steps(plan) == ["update: restartPolicy changed Always -> Never (the container is kept)"]
    assert plan.steps[0].target == "agent planned"


def test_labels_are_record_only_but_the_restart_annotation_recreates() -> None:
    plan = plan_apply(stored(agent(labels={"team": "a"})), agent(labels={"team": "b"}), RENDER)
    assert steps(plan) == ["update: labels.team changed a -> b (the container is kept)"]
    restarted = agent(annotations={ANNOTATION_RESTARTED_AT: "2024-05-01T00:00:00Z"})
    plan = plan_apply(stored(agent()), restarted, RENDER)
    assert [s.action for s in plan.steps] == ["recreate"]
    assert "annotations.parallax.ai/restartedAt added" in steps(plan)[0]


def test_equivalent_quantity_changes_the_record_but_not_the_container() -> None:
    plan = plan_apply(stored(agent(resources={"memory": "512m"})), agent(resources={"memory": "512Mi"}), RENDER)
    assert plan.outcome == "configured"
    assert steps(plan) == ["update: resources.memory changed 512m -> 512Mi (the container is kept)"]


def test_mixed_change_lists_container_causes_and_record_causes_separately() -> None:
    plan = plan_apply(
        stored(agent(image="busybox:1", restartPolicy="Always")),
        agent(image="busybox:2", restartPolicy="OnFailure", command=["sh", "-c", "sleep 1"]),
        RENDER,
    )
    assert steps(plan) == [
        'recreate: command changed null -> ["sh", "-c", "sleep 1"], image changed busybox:1 -> busybox:2',
        "update: restartPolicy changed Always -> OnFailure (the container is kept)",
    ]


def test_change_to_an_agent_without_a_container_creates_one() -> None:
    plan = plan_apply(stored(agent(), container=False), agent(network="other-net"), RENDER)
    assert steps(plan) == ["create: network changed parallax-agents -> other-net"]


def test_suspend_stops_and_resume_starts() -> None:
    plan = plan_apply(stored(agent()), agent(suspend=True), RENDER)
    assert steps(plan) == ["stop: suspend changed false -> true"]
    plan = plan_apply(stored(agent(suspend=True)), agent(suspend=False), RENDER)
    assert steps(plan) == ["start: suspend changed true -> false"]


def test_change_while_suspended_waits_for_resume() -> None:
    plan = plan_apply(stored(agent(suspend=True)), agent(suspend=True, resources={"cpu": 2}), RENDER)
    assert steps(plan) == ["update: resources.cpu changed 0.5 -> 2; the container is recreated when resumed"]


def test_resume_with_a_changed_spec_recreates() -> None:
    plan = plan_apply(stored(agent(suspend=True)), agent(resources={"cpu": 2}), RENDER)
    assert steps(plan) == ["recreate: resources.cpu changed 0.5 -> 2, suspend changed true -> false"]


def test_prune_deletes_the_container() -> None:
    plan = plan_delete(stored(agent()), "not in the applied set")
    assert plan.outcome == "pruned"
    assert steps(plan) == ["delete: not in the applied set"]
    assert plan.steps[0].target == "container parallax-agent-planned"


def test_long_values_are_shortened_and_odd_strings_quoted() -> None:
    assert show("x" * 200).endswith("...") and len(show("x" * 200)) == 60
    assert show(" padded ") == '" padded "'
    assert show(None) == "null"
    assert [str(c) for c in diff({"a": {"b": 1}}, {"a": {"b": 2, "c": True}})] == [
        "a.b changed 1 -> 2",
        "a.c added: true",
    ]


def test_fields_that_do_not_reach_the_container_are_found_by_rendering_not_by_name() -> None:
    plan = plan_apply(stored(agent()), agent(workspace={"keep": True}, stopGracePeriodSeconds=30), RENDER)
    assert steps(plan) == [
        "update: stopGracePeriodSeconds changed 10 -> 30, workspace.keep changed false -> true (the container is kept)"
    ]


def test_pausing_plans_a_pause_and_lifecycle_changes_keep_the_container() -> None:
    plan = plan_apply(stored(agent()), agent(paused=True), RENDER)
    assert steps(plan) == ["pause: paused changed false -> true"]
    plan = plan_apply(stored(agent(paused=True)), agent(paused=False), RENDER)
    assert [s.action for s in plan.steps] == ["unpause"]
    plan = plan_apply(stored(agent()), agent(lifecycle={"idleTimeoutSeconds": 60}), RENDER)
    assert steps(plan) == ["update: lifecycle.idleTimeoutSeconds changed null -> 60 (the container is kept)"]
