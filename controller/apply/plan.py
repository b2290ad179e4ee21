"""What applying an Agent would make the reconciler do, with a human cause per step (pure).

Docker Compose's planner is the model: one operation per step, each saying why, e.g.
``recreate: resources.memory changed 512m -> 1g``. Whether a change touches the container is not
guessed field by field: the desired instance is rendered (the runtime's ``render``, the same pure
function whose hash the reconciler compares) with and without each changed field, so the plan and the reconciler
can never disagree. Env values are secrets: a plan says ``env.API_KEY changed``, never the value.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from controller.model.agent import Agent, AgentSpec, container_name
from controller.runtime.interface import Desired

Render = Callable[[Agent], Desired]

Outcome = Literal["created", "configured", "unchanged", "pruned"]
Action = Literal["create", "recreate", "start", "stop", "pause", "unpause", "update", "delete"]

MAX_VALUE_CHARS = 60
_SECRET_ROOTS = ("env",)


@dataclass(frozen=True)
class FieldChange:
    path: str
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None

    @property
    def root(self) -> str:
        return re.split(r"[.\[]", self.path, maxsplit=1)[0]

    @property
    def secret(self) -> bool:
        return self.root in _SECRET_ROOTS

    def __str__(self) -> str:
        if self.secret:
            return f"{self.path} {self.kind}"
        if self.kind == "added":
            return f"{self.path} added: {show(self.new)}"
        if self.kind == "removed":
            return f"{self.path} removed (was {show(self.old)})"
        return f"{self.path} changed {show(self.old)} -> {show(self.new)}"


@dataclass(frozen=True)
class Step:
    action: Action
    target: str
    cause: str

    def __str__(self) -> str:
        return f"{self.action}: {self.cause}"

    def to_dict(self) -> dict[str, str]:
        return {"action": self.action, "target": self.target, "cause": self.cause}


@dataclass(frozen=True)
class Plan:
    name: str
    outcome: Outcome
    steps: tuple[Step, ...] = ()
    changes: tuple[FieldChange, ...] = ()

    def to_dict(self) -> list[dict[str, str]]:
        return [step.to_dict() for step in self.steps]


def show(value: Any) -> str:
    """A value as a person reads it in one line (YAML-ish scalars, compact JSON otherwise), shortened."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value if value and value.strip() == value else json.dumps(value)
    else:
        text = json.dumps(value, separators=(", ", ": "), sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def diff(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    """Leaf-level differences between two JSON-shaped values, in a stable order."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[FieldChange] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                changes.append(FieldChange(sub, "added", new=new[key]))
            elif key not in new:
                changes.append(FieldChange(sub, "removed", old=old[key]))
            else:
                changes.extend(diff(old[key], new[key], sub))
        return changes
    return [FieldChange(path, "changed", old, new)]


def agent_changes(stored: Agent, submitted: Agent) -> list[FieldChange]:
    """Spec fields (as ``resources.memory``), then ``labels.*`` and ``annotations.*``."""
    return [
        *diff(stored.spec.to_dict(redact=False), submitted.spec.to_dict(redact=False)),
        *diff(stored.metadata.labels, submitted.metadata.labels, "labels"),
        *diff(stored.metadata.annotations, submitted.metadata.annotations, "annotations"),
    ]


def container_roots(stored: Agent, submitted: Agent, render: Render) -> set[str]:
    """The changed top-level fields (``resources``, ``labels``...) that alone change the rendered
    container, so force a recreate. Each changed spec attribute is tried on its own."""
    base = render(stored).config_hash
    old_spec = stored.spec.to_dict(redact=False)
    affecting: set[str] = set()
    for attribute in dataclasses.fields(AgentSpec):
        value = getattr(submitted.spec, attribute.name)
        if getattr(stored.spec, attribute.name) == value:
            continue
        spec = dataclasses.replace(stored.spec, **{attribute.name: value})
        if render(Agent(stored.metadata, spec)).config_hash != base:
            affecting.update(change.root for change in diff(old_spec, spec.to_dict(redact=False)))
    if stored.metadata.labels != submitted.metadata.labels:
        metadata = dataclasses.replace(stored.metadata, labels=dict(submitted.metadata.labels))
        if render(Agent(metadata, stored.spec)).config_hash != base:
            affecting.add("labels")
    if stored.metadata.annotations != submitted.metadata.annotations:
        metadata = dataclasses.replace(stored.metadata, annotations=dict(submitted.metadata.annotations))
        if render(Agent(metadata, stored.spec)).config_hash != base:
            affecting.add("annotations")
    return affecting


def _join(changes: list[FieldChange]) -> str:
    return ", ".join(str(change) for change in changes)


def plan_apply(stored: Agent | None, submitted: Agent, render: Render) -> Plan:
    """The steps that writing ``submitted`` over ``stored`` (None: a new agent) sets in motion."""
    name = submitted.name
    container = f"container {container_name(name)}"
    record = f"agent {name}"
    if stored is None:
        if submitted.spec.suspend:
            step = Step("create", record, "new agent; spec.suspend is true, so no container is started")
        else:
            step = Step("create", container, f"new agent (image {render(submitted).image})")
        return Plan(name, "created", (step,))

    changes = agent_changes(stored, submitted)
    if not changes:
        return Plan(name, "unchanged")
    affecting_roots = container_roots(stored, submitted, render)
    affecting = [c for c in changes if c.root in affecting_roots]
    suspend = [c for c in changes if c.root == "suspend"]
    paused = [c for c in changes if c.root == "paused"]
    rest = [c for c in changes if c.root not in affecting_roots and c.root not in ("suspend", "paused")]
    has_container = bool(stored.status.get("containerId"))
    steps: list[Step] = []

    if submitted.spec.suspend:
        if suspend and has_container:
            steps.append(Step("stop", container, _join(suspend)))
        elif suspend:
            rest = suspend + rest
        if affecting:
            steps.append(Step("update", record, f"{_join(affecting)}; the container is recreated when resumed"))
    elif affecting:
        action: Action = "recreate" if has_container else "create"
        steps.append(Step(action, container, _join(affecting + suspend)))
    elif suspend:
        steps.append(Step("start" if has_container else "create", container, _join(suspend)))
    if paused and has_container and not submitted.spec.suspend and not affecting:
        steps.append(Step("pause" if submitted.spec.paused else "unpause", container, _join(paused)))
    elif paused:
        rest = paused + rest
    if rest:
        steps.append(Step("update", record, f"{_join(rest)} (the container is kept)"))
    return Plan(name, "configured", tuple(steps), tuple(changes))


def plan_delete(stored: Agent, cause: str) -> Plan:
    """Pruning ``stored``: its container is stopped and removed, then its record."""
    target = f"container {container_name(stored.name)}" if stored.status.get("containerId") else f"agent {stored.name}"
    return Plan(stored.name, "pruned", (Step("delete", target, cause),))
