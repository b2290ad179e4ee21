"""The Swarm service an Agent should have, as a pure function of the Agent and the settings.

``render_service`` returns a Docker Engine ``ServiceSpec`` (API 1.41) with one replica; ``desired_service``
adds the config hash and generation labels. The local runtime's container and this service say the same
things where the two APIs can (``controller.runtime.docker.render`` is the reference); what a service spec
cannot say is covered elsewhere and listed in the README ("Swarm runtime").
"""

from __future__ import annotations

from typing import Any

from controller.config import Settings
from controller.model.agent import AGENT_HOME, WORKSPACE_PATH, Agent, capability_name
from controller.model.mounts import parse_volume
from controller.model.quantity import nano_cpus, parse_memory
from controller.runtime.docker.render import (
    LABEL_AGENT,
    LABEL_GENERATION,
    LABEL_HASH,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LOG_MAX_FILE,
    LOG_MAX_SIZE,
    agent_labels,
    config_hash,
    image_for,
    workspace_labels,
    workspace_volume,
)

LABEL_NETWORK = "parallax.network"
TMPFS_BYTES = 64 * 1024 * 1024
TMPFS_MODE = 0o1777


def _tmpfs(target: str) -> dict[str, Any]:
    return {"Type": "tmpfs", "Target": target, "TmpfsOptions": {"SizeBytes": TMPFS_BYTES, "Mode": TMPFS_MODE}}


def render_service(agent: Agent, settings: Settings, name: str) -> dict[str, Any]:
    """The ``ServiceSpec`` for ``agent`` named ``name``, without the hash and generation labels."""
    spec = agent.spec
    memory = parse_memory(spec.resources.memory)
    cpus = nano_cpus(spec.resources.cpu)
    labels = {**agent_labels(agent, settings), LABEL_NETWORK: spec.network}
    mounts: list[dict[str, Any]] = [
        _tmpfs("/tmp"),
        _tmpfs(AGENT_HOME),
        {
            "Type": "volume",
            "Source": workspace_volume(agent.name, settings.instance),
            "Target": WORKSPACE_PATH,
            "VolumeOptions": {"Labels": workspace_labels(agent, settings), "DriverConfig": {"Name": "local"}},
        },
    ]
    for volume in spec.volumes:
        bind = parse_volume(volume)
        mounts.append(
            {"Type": "bind", "Source": bind.host_path, "Target": bind.container_path, "ReadOnly": bind.read_only}
        )
    container: dict[str, Any] = {
        "Image": image_for(spec, settings),
        "Hostname": agent.name[:63],
        "Env": spec.container_env(),
        # on the task's container too, so a node's own listing shows whose it is
        "Labels": {LABEL_MANAGED: "true", LABEL_AGENT: agent.name, LABEL_INSTANCE: settings.instance},
        "OpenStdin": True,
        "TTY": False,
        "ReadOnly": True,
        "Init": True,
        "Mounts": mounts,
        "CapabilityDrop": ["ALL"],
        "StopGracePeriod": spec.stop_grace_period_seconds * 1_000_000_000,
    }
    context = spec.security_context
    if context.run_as_user is not None:
        group = f":{context.run_as_group}" if context.run_as_group is not None else ""
        container["User"] = f"{context.run_as_user}{group}"
    if context.add_capabilities:
        container["CapabilityAdd"] = sorted({f"CAP_{capability_name(c)}" for c in context.add_capabilities})
    if spec.command is not None:
        container["Command"] = list(spec.command)
    if spec.args is not None:
        container["Args"] = list(spec.args)
    return {
        "Name": name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {"NanoCPUs": cpus, "MemoryBytes": memory, "Pids": spec.resources.pids},
                "Reservations": {"NanoCPUs": cpus, "MemoryBytes": memory},
            },
            # Restarts stay the controller's (restartPolicy, crash-loop back-off): Swarm never restarts a task.
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
            "Placement": {"Constraints": list(spec.placement_constraints)} if spec.placement_constraints else {},
            "Networks": [{"Target": spec.network, "Aliases": [agent.name]}],
            "LogDriver": {"Name": "json-file", "Options": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}},
            "ForceUpdate": 0,
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        # a changed spec is a service update: the old task stopped, then the new one started; a new task
        # that fails is the controller's to restart, so the update never pauses on it
        "UpdateConfig": {"Parallelism": 1, "Order": "stop-first", "FailureAction": "continue"},
        "EndpointSpec": {"Mode": "dnsrr"},
    }


def desired_service(agent: Agent, settings: Settings, name: str) -> tuple[dict[str, Any], str]:
    """The service spec with its hash and generation labels added, and the hash."""
    spec = render_service(agent, settings, name)
    digest = config_hash(spec)
    spec["Labels"] = {**spec["Labels"], LABEL_HASH: digest, LABEL_GENERATION: str(agent.metadata.generation)}
    return spec, digest
