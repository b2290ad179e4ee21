"""An ``AgentConfig`` (``packages/runtime-interface/src/types.ts`` in HaruHunab1320/parallax) as the flat
Agent body that ``controller.admission.admit`` judges, like any body sent to ``POST /agents``.

Every field of the config is either carried into the Agent or refused by name (422); none is dropped:

- ``id`` is the Agent's name (one is made from ``name`` when absent); ``name``, ``capabilities``, ``role``,
  ``reportsTo`` and ``executionId`` are annotations, ``role`` and ``executionId`` also labels when their
  value is a valid label value (so ``-l parallax.ai/execution-id=...`` selects them);
- ``env`` is the Agent's env, and ``credentials`` add the variables the agent images read
  (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``, ``GOOGLE_API_KEY``, ``GITHUB_TOKEN``, and ``custom`` as given):
  secrets like every env value. One variable given two different values is refused;
- ``resources.cpu`` / ``resources.memory`` are the Agent's (``"500m"``, ``"2Gi"``);
- ``autoRestart`` false is ``restartPolicy: Never``, true (or absent) ``Always``;
- ``idleTimeout`` ("stop after N seconds idle") is ``spec.lifecycle.idleTimeoutSeconds`` (onIdle
  Suspend: stopped, record and workspace kept) and ``resources.timeout`` ("max lifetime in seconds")
  ``spec.lifecycle.activeDeadlineSeconds``;
- ``workdir`` has no counterpart in an Agent, so it is refused rather than ignored.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.admission.admit import AdmissionError
from controller.admission.schema import FieldError

ANNOTATION_NAME = "parallax.ai/display-name"
ANNOTATION_CAPABILITIES = "parallax.ai/capabilities"
ANNOTATION_ROLE = "parallax.ai/role"
ANNOTATION_REPORTS_TO = "parallax.ai/reports-to"
ANNOTATION_EXECUTION_ID = "parallax.ai/execution-id"
LABEL_ROLE = "parallax.ai/role"
LABEL_EXECUTION_ID = "parallax.ai/execution-id"

CREDENTIAL_ENV = {
    "anthropicKey": "ANTHROPIC_API_KEY",
    "openaiKey": "OPENAI_API_KEY",
    "googleKey": "GOOGLE_API_KEY",
    "githubToken": "GITHUB_TOKEN",
}
CONFIG_FIELDS = frozenset(
    {
        "id",
        "name",
        "type",
        "capabilities",
        "role",
        "reportsTo",
        "workdir",
        "env",
        "credentials",
        "resources",
        "autoRestart",
        "idleTimeout",
        "executionId",
    }
)
UNSUPPORTED = {
    "workdir": (
        "not supported by this runtime: every agent works in its own /workspace volume; mount host "
        "directories with spec.volumes through /agents"
    ),
}
# "Stop after N seconds idle" and "max lifetime in seconds" are spec.lifecycle's idle timeout (the agent
# is suspended: stopped, its record and workspace kept) and active deadline.
LIFECYCLE_FIELDS = {"idleTimeout": "idleTimeoutSeconds", "resources.timeout": "activeDeadlineSeconds"}
MAX_TEXT = 65536
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_INVALID_KEY = re.compile(r"invalid key '([^']*)'")
ID_STEM_LENGTH = 40


@dataclass(frozen=True)
class Translated:
    """The flat Agent body, and where each of its fields came from in the config (for error messages)."""

    body: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)

    def config_field(self, agent_field: str) -> str:
        """The AgentConfig field an admission error about ``agent_field`` (flat form) is about."""
        if agent_field in self.origins:
            return self.origins[agent_field]
        for prefix, origin in (("annotations", "(body)"), ("labels", "(body)"), ("restartPolicy", "autoRestart")):
            if agent_field == prefix or agent_field.startswith(prefix + "."):
                return origin
        return agent_field

    def renamed(self, error: AdmissionError) -> AdmissionError:
        """``error`` with its fields named as in the AgentConfig (a bad variable name is reported on
        ``env`` itself, as ``invalid key 'NAME'``: named after where that variable came from)."""
        errors = []
        for e in error.errors:
            key = _INVALID_KEY.match(e.message) if e.field == "env" else None
            origin = self.origins.get(f"env.{key.group(1)}") if key else None
            errors.append(FieldError(origin or self.config_field(e.field), e.message))
        return AdmissionError(errors, forbidden=error.forbidden)


def generated_id(name: str, suffix: str | None = None) -> str:
    """An id for a config without one: its name as a DNS label, and 8 random hex digits
    (``"Architect 1"`` -> ``architect-1-3f9a2b1c``)."""
    stem = _NOT_NAME.sub("-", name.lower()).strip("-")[:ID_STEM_LENGTH].strip("-") or "agent"
    return f"{stem}-{suffix or secrets.token_hex(4)}"


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.match(value) is not None


def _text(config: Mapping[str, Any], key: str, errors: list[FieldError], *, required: bool = False) -> str | None:
    value = config.get(key)
    if value is None:
        if required:
            errors.append(FieldError(key, "required field is missing"))
        return None
    if not isinstance(value, str) or value == "" or len(value) > MAX_TEXT or "\x00" in value:
        errors.append(FieldError(key, f"must be a non-empty string of at most {MAX_TEXT} characters without NUL"))
        return None
    return value


def _string_map(value: Any, key: str, errors: list[FieldError]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError(key, "must be an object"))
        return {}
    return value


def to_agent_body(config: Any, *, suffix: str | None = None) -> Translated:
    """The flat Agent body for ``config``; ``AdmissionError`` (422) naming every AgentConfig field that
    is malformed or cannot be honoured. The body still goes through ``admit`` (schema and policy), whose
    errors ``Translated.renamed`` names as config fields."""
    if not isinstance(config, dict):
        raise AdmissionError([FieldError("(body)", "must be a JSON object (an AgentConfig)")])
    errors: list[FieldError] = [FieldError(k, "unknown field") for k in sorted(set(config) - CONFIG_FIELDS)]
    origins: dict[str, str] = {}
    if config.get("workdir") is not None:
        errors.append(FieldError("workdir", UNSUPPORTED["workdir"]))
    name = _text(config, "name", errors, required=True)
    agent_id = _text(config, "id", errors)
    role = _text(config, "role", errors)
    reports_to = _text(config, "reportsTo", errors)
    execution_id = _text(config, "executionId", errors)

    capabilities = config.get("capabilities")
    if capabilities is None:
        capabilities = []
    elif not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        errors.append(FieldError("capabilities", "must be a list of strings"))
        capabilities = []

    env: dict[str, Any] = {}

    def add_env(variable: str, value: Any, origin: str) -> None:
        if not isinstance(value, str):
            errors.append(FieldError(origin, "must be a string"))
            return
        if variable in env and env[variable] != value:
            errors.append(
                FieldError(origin, f"sets {variable}, which {origins[f'env.{variable}']} sets to another value")
            )
            return
        if variable not in env:
            env[variable] = value
            origins[f"env.{variable}"] = origin

    for variable, value in _string_map(config.get("env"), "env", errors).items():
        add_env(variable, value, f"env.{variable}")
    credentials = _string_map(config.get("credentials"), "credentials", errors)
    for key in sorted(set(credentials) - {*CREDENTIAL_ENV, "custom"}):
        errors.append(FieldError(f"credentials.{key}", "unknown field"))
    for key, variable in CREDENTIAL_ENV.items():
        if credentials.get(key) is not None:
            add_env(variable, credentials[key], f"credentials.{key}")
    for variable, value in _string_map(credentials.get("custom"), "credentials.custom", errors).items():
        add_env(variable, value, f"credentials.custom.{variable}")

    resources_in = _string_map(config.get("resources"), "resources", errors)
    resources: dict[str, Any] = {}
    for key in sorted(set(resources_in) - {"cpu", "memory", "timeout"}):
        errors.append(FieldError(f"resources.{key}", "unknown field"))
    lifecycle: dict[str, Any] = {}
    for origin, seconds in (
        ("idleTimeout", config.get("idleTimeout")),
        ("resources.timeout", resources_in.get("timeout")),
    ):
        if seconds is None:
            continue
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != int(seconds) or seconds < 1:
            errors.append(FieldError(origin, "must be a whole number of seconds, at least 1"))
            continue
        lifecycle[LIFECYCLE_FIELDS[origin]] = int(seconds)
        origins[f"lifecycle.{LIFECYCLE_FIELDS[origin]}"] = origin
    for key in ("cpu", "memory"):
        if resources_in.get(key) is not None:
            resources[key] = resources_in[key]

    auto_restart = config.get("autoRestart")
    if auto_restart is not None and not isinstance(auto_restart, bool):
        errors.append(FieldError("autoRestart", "must be true or false"))

    if errors:
        raise AdmissionError(sorted(errors, key=lambda e: e.field))
    assert name is not None
    annotations = {ANNOTATION_NAME: name, ANNOTATION_CAPABILITIES: json.dumps(capabilities)}
    labels: dict[str, str] = {}
    origins[f"annotations.{ANNOTATION_NAME}"] = "name"
    origins[f"annotations.{ANNOTATION_CAPABILITIES}"] = "capabilities"
    for key, value, annotation, label in (
        ("role", role, ANNOTATION_ROLE, LABEL_ROLE),
        ("reportsTo", reports_to, ANNOTATION_REPORTS_TO, None),
        ("executionId", execution_id, ANNOTATION_EXECUTION_ID, LABEL_EXECUTION_ID),
    ):
        if value is None:
            continue
        annotations[annotation] = value
        origins[f"annotations.{annotation}"] = key
        if label is not None and is_label_value(value):
            labels[label] = value
    origins["name"] = "id"
    body: dict[str, Any] = {
        "name": agent_id if agent_id is not None else generated_id(name, suffix),
        "labels": labels,
        "annotations": annotations,
        "type": config.get("type"),
        "restartPolicy": "Never" if auto_restart is False else "Always",
    }
    if "type" not in config or config["type"] is None:
        body.pop("type")
    if env:
        body["env"] = env
    if resources:
        body["resources"] = resources
    if lifecycle:
        body["lifecycle"] = lifecycle
    return Translated(body, origins)
