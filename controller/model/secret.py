"""The Secret resource as plain data, its validation, and resolving an agent's ``secretKeyRef`` env.

Pure: no I/O. A Secret is named data (``key: value``), Kubernetes-style: created with ``data`` (base64)
and/or ``stringData`` (text); read back with its keys, the version each key last changed at and the
agents that use it, never a value. Agents name a key of it in their env (``secretKeyRef``); the
controller resolves those when it renders the container, so the values never live in the agent's record.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Any

from controller.model.agent import API_VERSION, Agent

KIND = "Secret"
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KEY_PATTERN = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_NAME = 253
MAX_KEY = 253
MAX_KEYS = 64
MAX_VALUE = 32768
"""Characters of one value: what an inline env value may hold (a Secret's values are env values)."""
MAX_BYTES = 1024 * 1024
"""A Secret's values together, as UTF-8 (Kubernetes' limit)."""
CONDITION = "SecretMissing"
ERROR_CODE = "SECRET_MISSING"


@dataclass
class Secret:
    name: str
    data: dict[str, str]
    """Plain text values: only in memory (the stores seal them, responses never show them)."""
    labels: dict[str, str] = field(default_factory=dict)
    uid: str = ""
    version: int = 0
    """Moves on every write that changes a value or adds or removes a key."""
    key_versions: dict[str, int] = field(default_factory=dict)
    """The version each key's value last changed at: what an agent's config hash digests."""
    creation_timestamp: str | None = None

    def copy(self) -> Secret:
        return replace(self, data=dict(self.data), labels=dict(self.labels), key_versions=dict(self.key_versions))

    def to_public(self, used_by: list[str]) -> dict[str, Any]:
        """What the API shows: keys with their versions, and who uses it; never a value."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": self.name,
                "uid": self.uid,
                "resourceVersion": str(self.version),
                "creationTimestamp": self.creation_timestamp,
                "labels": dict(self.labels),
            },
            "keys": {key: {"version": self.key_versions.get(key, self.version)} for key in sorted(self.data)},
            "version": self.version,
            "usedBy": sorted(used_by),
        }

    def next_version(self, data: dict[str, str], labels: dict[str, str]) -> Secret:
        """This secret with ``data`` and ``labels`` written: the version moves only when the data changes,
        each key's version only when its value does."""
        if data == self.data:
            return replace(self.copy(), labels=dict(labels))
        version = self.version + 1
        key_versions = {
            k: (self.key_versions.get(k, version) if self.data.get(k) == v else version) for k, v in data.items()
        }
        return replace(self.copy(), data=dict(data), labels=dict(labels), version=version, key_versions=key_versions)


def is_secret_document(body: Any) -> bool:
    return isinstance(body, dict) and body.get("kind") == KIND


def references(agent: Agent, secret: str) -> bool:
    return any(ref.name == secret for ref in agent.spec.env_refs.values())


@dataclass(frozen=True)
class Missing:
    """A reference that names a Secret, or a key of it, that does not exist."""

    variable: str
    secret: str
    key: str
    secret_exists: bool

    def message(self) -> str:
        if self.secret_exists:
            return f"env {self.variable}: secret {self.secret!r} has no key {self.key!r}"
        return f"env {self.variable}: secret {self.secret!r} does not exist"


def resolve_env(agent: Agent, secrets: dict[str, Secret]) -> tuple[Agent, list[Missing]]:
    """``agent`` with every ``secretKeyRef`` replaced by the value it names (so rendering, hashing and
    scrubbing Docker's text see the value like any inline one), and the references that cannot be
    resolved (they stay as references, which render as placeholders: a suspended or deleted agent still
    converges). Only the resolved copy carries values: it is never written back."""
    if not agent.spec.env_refs:
        return agent, []
    env = dict(agent.spec.env)
    missing: list[Missing] = []
    unresolved = {}
    for variable, ref in sorted(agent.spec.env_refs.items()):
        secret = secrets.get(ref.name)
        if secret is None or ref.key not in secret.data:
            missing.append(Missing(variable, ref.name, ref.key, secret is not None))
            unresolved[variable] = ref
            continue
        env[variable] = secret.data[ref.key]
    spec = replace(agent.spec, env=env, env_refs=unresolved)
    return Agent(replace(agent.metadata), spec, copy.deepcopy(agent.status)), missing
