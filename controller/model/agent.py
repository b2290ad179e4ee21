"""The Agent resource as plain data: metadata, spec (desired) and status (observed).

Pure data: no I/O here. ``to_manifest`` is the one place that decides how an Agent looks on the
wire, and it redacts secrets unless told not to (the store is the only caller that keeps them).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field, replace
from typing import Any

from controller.egress.policy import EgressSpec

API_VERSION = "parallax.ai/v1"
KIND = "Agent"
REDACTED = "<redacted>"
# The agent's side of the contract every runtime keeps: where its home and workspace are, and the
# annotation ``POST /agents/{name}/restart`` sets (a new value makes a new instance).
AGENT_HOME = "/home/agent"
WORKSPACE_PATH = "/workspace"
ANNOTATION_RESTARTED_AT = "parallax.ai/restartedAt"


def capability_name(capability: str) -> str:
    """``CAP_CHOWN`` and ``CHOWN`` name the same capability."""
    return capability.removeprefix("CAP_")


PHASES = ("Pending", "Running", "Paused", "Succeeded", "Failed", "CrashLoopBackOff", "Suspended", "Terminating")
ON_IDLE = ("Suspend", "Delete")
TYPES = ("claude", "codex", "gemini", "aider", "custom")
CONTAINER_PREFIX = "parallax-agent-"


def container_name(agent_name: str) -> str:
    """``parallax-agent-<name>``; a name already starting with ``agent-`` is not prefixed twice.

    This keeps the seed's pairing of ``/agents/agent-123`` with ``docker logs parallax-agent-123``.
    The store refuses two agents that would share a container name.
    """
    if agent_name.startswith("agent-") and len(agent_name) > len("agent-"):
        agent_name = agent_name[len("agent-") :]
    return CONTAINER_PREFIX + agent_name


@dataclass(frozen=True)
class Resources:
    memory: str | int
    cpu: float | str
    pids: int

    def to_dict(self) -> dict[str, Any]:
        return {"memory": self.memory, "cpu": self.cpu, "pids": self.pids}


@dataclass(frozen=True)
class SecurityContext:
    """Who the agent runs as (None: the image's user) and the capabilities it gets back."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    add_capabilities: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "runAsUser": self.run_as_user,
            "runAsGroup": self.run_as_group,
            "capabilities": {"add": list(self.add_capabilities)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecurityContext:
        return cls(
            run_as_user=data.get("runAsUser"),
            run_as_group=data.get("runAsGroup"),
            add_capabilities=tuple((data.get("capabilities") or {}).get("add") or ()),
        )


@dataclass(frozen=True)
class Lifecycle:
    """How long an agent may live and idle (``spec.lifecycle``); the reconciler enforces it from stored
    times (``controller.reconcile.lifecycle``). None: no such limit."""

    active_deadline_seconds: int | None = None
    idle_timeout_seconds: int | None = None
    on_idle: str | None = None
    """``Suspend`` (the default when ``idle_timeout_seconds`` is set) or ``Delete``."""
    ttl_seconds_after_finished: int | None = None
    resume_on_activity: bool = False

    @property
    def idle_action(self) -> str:
        return self.on_idle or "Suspend"

    def to_dict(self) -> dict[str, Any]:
        return {
            "activeDeadlineSeconds": self.active_deadline_seconds,
            "idleTimeoutSeconds": self.idle_timeout_seconds,
            "onIdle": self.on_idle,
            "ttlSecondsAfterFinished": self.ttl_seconds_after_finished,
            "resumeOnActivity": self.resume_on_activity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lifecycle:
        return cls(
            active_deadline_seconds=data.get("activeDeadlineSeconds"),
            idle_timeout_seconds=data.get("idleTimeoutSeconds"),
            on_idle=data.get("onIdle"),
            ttl_seconds_after_finished=data.get("ttlSecondsAfterFinished"),
            resume_on_activity=bool(data.get("resumeOnActivity", False)),
        )


@dataclass(frozen=True)
class SecretKeyRef:
    """``env: {NAME: {"secretKeyRef": {"name": ..., "key": ...}}}``: the value of key ``key`` of the
    Secret ``name``, resolved by the controller when it renders the container (never stored with the agent)."""

    name: str
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"secretKeyRef": {"name": self.name, "key": self.key}}


@dataclass(frozen=True)
class AgentSpec:
    type: str
    resources: Resources
    network: str
    image: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()
    restart_policy: str = "Always"
    suspend: bool = False
    paused: bool = False
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    stop_grace_period_seconds: int = 10
    security_context: SecurityContext = field(default_factory=SecurityContext)
    keep_workspace: bool = False
    placement_constraints: tuple[str, ...] = ()
    """Swarm placement constraints (``node.labels.zone==eu``): which nodes the agent's task may run on."""
    env_refs: dict[str, SecretKeyRef] = field(default_factory=dict)
    """Env entries taken from Secrets (``secretKeyRef``); ``env`` holds the inline values."""
    egress: EgressSpec | None = None
    """What the agent may reach outside its network; None: the server's default (``PARALLAX_EGRESS_DEFAULT``)."""
    runtime_class_name: str = "runc"

    def env_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """``spec.env`` as written: inline values (``<redacted>`` unless ``redact`` is off) and references."""
        env: dict[str, Any] = {k: (REDACTED if redact else v) for k, v in self.env.items()}
        env.update({k: ref.to_dict() for k, ref in self.env_refs.items()})
        return dict(sorted(env.items()))

    def container_env(self) -> list[str]:
        """``NAME=value`` entries for the container. The reconciler renders agents whose references were
        resolved (``controller.model.secret.resolve_env``); a reference still here (a dry run's plan
        renders the record as written) stands as a placeholder naming it, so changing it changes the hash."""
        env = [f"{key}={value}" for key, value in self.env.items()]
        env += [f"{key}=<secretKeyRef {ref.name}/{ref.key}>" for key, ref in self.env_refs.items()]
        return sorted(env)

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        out = {
            "type": self.type,
            "image": self.image,
            "command": list(self.command) if self.command is not None else None,
            "args": list(self.args) if self.args is not None else None,
            "env": self.env_dict(redact=redact),
            "resources": self.resources.to_dict(),
            "volumes": list(self.volumes),
            "network": self.network,
            "restartPolicy": self.restart_policy,
            "suspend": self.suspend,
            "paused": self.paused,
            "lifecycle": self.lifecycle.to_dict(),
            "stopGracePeriodSeconds": self.stop_grace_period_seconds,
            "securityContext": self.security_context.to_dict(),
            "workspace": {"keep": self.keep_workspace},
            "placement": {"constraints": list(self.placement_constraints)},
            "runtimeClassName": self.runtime_class_name,
        }
        if self.egress is not None:
            out["egress"] = self.egress.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], defaults: SpecDefaults) -> AgentSpec:
        """Build a spec from schema-valid data, filling what the user left out."""
        res = data.get("resources") or {}
        command = data.get("command")
        args = data.get("args")
        return cls(
            type=data["type"],
            image=data.get("image"),
            command=tuple(command) if command is not None else None,
            args=tuple(args) if args is not None else None,
            env={k: v for k, v in (data.get("env") or {}).items() if not isinstance(v, dict)},
            env_refs={
                k: SecretKeyRef(v["secretKeyRef"]["name"], v["secretKeyRef"]["key"])
                for k, v in (data.get("env") or {}).items()
                if isinstance(v, dict)
            },
            resources=Resources(
                memory=res.get("memory", defaults.memory),
                cpu=res.get("cpu", defaults.cpu),
                pids=res.get("pids", defaults.pids),
            ),
            volumes=tuple(data.get("volumes") or ()),
            network=data.get("network") or defaults.network,
            restart_policy=data.get("restartPolicy", "Always"),
            suspend=bool(data.get("suspend", False)),
            paused=bool(data.get("paused", False)),
            lifecycle=Lifecycle.from_dict(data.get("lifecycle") or {}),
            stop_grace_period_seconds=data.get("stopGracePeriodSeconds", 10),
            security_context=SecurityContext.from_dict(data.get("securityContext") or {}),
            keep_workspace=bool((data.get("workspace") or {}).get("keep", False)),
            placement_constraints=tuple((data.get("placement") or {}).get("constraints") or ()),
            egress=EgressSpec.from_dict(data["egress"]) if isinstance(data.get("egress"), dict) else None,
            # a record stored before the field existed ran under runc, whatever the default is now
            runtime_class_name=data.get("runtimeClassName") or "runc",
        )


@dataclass(frozen=True)
class SpecDefaults:
    memory: str | int
    cpu: float | str
    pids: int
    network: str


@dataclass
class Metadata:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = ""
    generation: int = 0
    resource_version: int = 0
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uid": self.uid,
            "generation": self.generation,
            "resourceVersion": str(self.resource_version),
            "creationTimestamp": self.creation_timestamp,
            "deletionTimestamp": self.deletion_timestamp,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metadata:
        return cls(
            name=data["name"],
            labels=dict(data.get("labels") or {}),
            annotations=dict(data.get("annotations") or {}),
            uid=data.get("uid", ""),
            generation=int(data.get("generation", 0)),
            resource_version=int(data.get("resourceVersion", 0)),
            creation_timestamp=data.get("creationTimestamp"),
            deletion_timestamp=data.get("deletionTimestamp"),
        )


@dataclass
class Agent:
    metadata: Metadata
    spec: AgentSpec
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def phase(self) -> str:
        return str(self.status.get("phase", "Pending"))

    def copy(self) -> Agent:
        return Agent(replace(self.metadata), self.spec, copy.deepcopy(self.status))

    @functools.cached_property
    def manifest_json(self) -> str:
        """The redacted manifest as JSON text, computed once: for records that are no longer changed."""
        return json.dumps(self.to_manifest())

    def to_manifest(self, *, redact: bool = True) -> dict[str, Any]:
        status = copy.deepcopy(self.status) or {"phase": "Pending"}
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": self.metadata.to_dict(),
            "spec": self.spec.to_dict(redact=redact),
            "status": status,
        }

    @classmethod
    def from_manifest(cls, data: dict[str, Any], defaults: SpecDefaults) -> Agent:
        return cls(
            metadata=Metadata.from_dict(data["metadata"]),
            spec=AgentSpec.from_dict(data["spec"], defaults),
            status=copy.deepcopy(data.get("status") or {}),
        )


def keep_stored_secrets(agent: Agent, stored: Agent) -> Agent:
    """``agent`` with every env value that reads ``<redacted>`` replaced by the stored secret of that name:
    a client that read an agent (values redacted) and sends it back keeps the secrets it never saw."""
    env = {k: (stored.spec.env[k] if v == REDACTED and k in stored.spec.env else v) for k, v in agent.spec.env.items()}
    if env == agent.spec.env:
        return agent
    return Agent(agent.metadata, replace(agent.spec, env=env), agent.status)
