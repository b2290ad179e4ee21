"""The container an Agent should have, as a pure function of the Agent and the settings.

``render_container`` returns a Docker Engine ``ContainerCreate`` body; ``config_hash`` digests it.
The hash goes on the container as a label, so the reconciler tells "spec changed: recreate" from
"same spec: keep" without comparing Docker's inspect output field by field (Docker Compose's way).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controller.config import Settings
from controller.egress.policy import effective, egress_network
from controller.model.agent import (
    AGENT_HOME,
    ANNOTATION_RESTARTED_AT,
    WORKSPACE_PATH,
    Agent,
    AgentSpec,
    capability_name,
)
from controller.model.mounts import parse_volume
from controller.model.quantity import nano_cpus, parse_memory
from controller.model.runtime_class import GVISOR, host_pids_limit

LABEL_MANAGED = "parallax.managed"
LABEL_AGENT = "parallax.agent"
LABEL_UID = "parallax.agent.uid"
LABEL_TYPE = "parallax.agent.type"
LABEL_HASH = "parallax.config-hash"
LABEL_GENERATION = "parallax.generation"
LABEL_INSTANCE = "parallax.instance"
LABEL_RESTARTED_AT = "parallax.restarted-at"
LABEL_EGRESS_GATEWAY = "parallax.egress-gateway"

WORKSPACE_PREFIX = "parallax-workspace-"
# exec: coding agents run what they install in their home or /tmp (npx, pip --user, downloaded tools), as
# they may in /workspace; Docker's tmpfs default is noexec. nosuid and nodev stay.
TMPFS_OPTIONS = "rw,exec,nosuid,nodev,mode=1777,size=64m"
LOG_MAX_SIZE = "10m"
LOG_MAX_FILE = "3"
EGRESS_GATEWAY = "{egress-gateway}"
"""Stands for the egress gateway's address on the agent's internal network in a rendered config: the
address is known once the network exists, and is no part of the config's hash (``with_gateway``)."""
# A resolver no packet from an internal network reaches (TEST-NET-1, never assigned; forwarding from an
# internal network is dropped): Docker's embedded DNS still answers the agent's peers by name, and
# nothing else. An agent needs no other name resolved: the gateway resolves the names it forwards to.
EGRESS_DNS = "192.0.2.1"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
NO_PROXY = "localhost,127.0.0.1,::1"


def workspace_volume(agent_name: str, instance: str = "default") -> str:
    """The agent's named volume, mounted read-write at ``/workspace``: the only writable disk it has.

    Controllers sharing one daemon (``PARALLAX_INSTANCE``) get volumes of their own names.
    """
    if instance != "default":
        return f"{WORKSPACE_PREFIX}{instance}-{agent_name}"
    return WORKSPACE_PREFIX + agent_name


def workspace_labels(agent: Agent, settings: Settings) -> dict[str, str]:
    """Labels of the workspace volume: ours, this agent's, this controller instance's (no uid, so a
    kept workspace is found again by an agent re-created under the same name)."""
    return {LABEL_MANAGED: "true", LABEL_AGENT: agent.name, LABEL_INSTANCE: settings.instance}


def image_for(spec: AgentSpec, settings: Settings) -> str:
    if spec.image:
        return spec.image
    return f"{settings.image_prefix}{'base' if spec.type == 'custom' else spec.type}:latest"


def agent_labels(agent: Agent, settings: Settings) -> dict[str, str]:
    """The labels of an agent's instance (a container, a Swarm service), without hash and generation."""
    labels = {
        LABEL_MANAGED: "true",
        LABEL_AGENT: agent.name,
        LABEL_UID: agent.metadata.uid,
        LABEL_TYPE: agent.spec.type,
        LABEL_INSTANCE: settings.instance,
    }
    restarted_at = agent.metadata.annotations.get(ANNOTATION_RESTARTED_AT)
    if restarted_at:
        labels[LABEL_RESTARTED_AT] = restarted_at
    return labels


def agent_network(agent: Agent, settings: Settings) -> str:
    """The network the agent's container joins: its own, or that network's internal twin when its egress
    goes through the gateway (the twin's agents reach each other by name as on the network itself)."""
    if effective(agent.spec.egress, agent.spec.type, settings.egress_policy_default).restricted:
        return egress_network(agent.spec.network)
    return agent.spec.network


def agent_env(agent: Agent, settings: Settings) -> list[str]:
    """The container's ``NAME=value`` entries (``AgentSpec.container_env``), with the proxy variables pointing
    at the gateway, in place of any the spec sets, when its egress is restricted."""
    entries = agent.spec.container_env()
    if agent_network(agent, settings) != agent.spec.network:
        proxy = f"http://{EGRESS_GATEWAY}:{settings.egress_port}"
        forced = {name: proxy for name in PROXY_VARIABLES} | {"NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}
        entries = [e for e in entries if e.partition("=")[0] not in forced]
        entries += [f"{name}={value}" for name, value in forced.items()]
    return sorted(entries)


def with_gateway(config: dict[str, Any], gateway: str) -> dict[str, Any]:
    """``config`` with the gateway's address in place of ``EGRESS_GATEWAY`` (in the proxy variables), and
    as a label: a container whose gateway has moved (its network made again elsewhere) is made again."""
    return {
        **config,
        "Env": [entry.replace(EGRESS_GATEWAY, gateway) for entry in config.get("Env") or []],
        "Labels": {**(config.get("Labels") or {}), LABEL_EGRESS_GATEWAY: gateway},
    }


def render_container(agent: Agent, settings: Settings) -> dict[str, Any]:
    """The ``ContainerCreate`` body for ``agent``, without the hash and generation labels."""
    spec = agent.spec
    memory = parse_memory(spec.resources.memory)
    labels = agent_labels(agent, settings)
    network = agent_network(agent, settings)
    config: dict[str, Any] = {
        "Image": image_for(spec, settings),
        "Hostname": agent.name[:63],
        "Env": agent_env(agent, settings),
        "Labels": labels,
        "OpenStdin": True,
        "StdinOnce": False,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "HostConfig": {
            "Memory": memory,
            "MemorySwap": memory,
            "NanoCpus": nano_cpus(spec.resources.cpu),
            "PidsLimit": host_pids_limit(spec.runtime_class_name, spec.resources.pids),
            "Binds": [parse_volume(v).docker_bind() for v in spec.volumes],
            "Mounts": [
                {"Type": "volume", "Source": workspace_volume(agent.name, settings.instance), "Target": WORKSPACE_PATH}
            ],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": TMPFS_OPTIONS, AGENT_HOME: TMPFS_OPTIONS},
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "Init": True,
            "Privileged": False,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}},
            "RestartPolicy": {"Name": "no"},
            "NetworkMode": network,
        },
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [agent.name]}}},
    }
    if network != spec.network:
        config["HostConfig"]["Dns"] = [EGRESS_DNS]
    if spec.runtime_class_name == GVISOR:
        # only then: an agent under runc keeps the create body (and config hash) it had before the field
        config["HostConfig"]["Runtime"] = settings.gvisor_runtime
    context = spec.security_context
    if context.run_as_user is not None:
        group = f":{context.run_as_group}" if context.run_as_group is not None else ""
        config["User"] = f"{context.run_as_user}{group}"
    if context.add_capabilities:
        config["HostConfig"]["CapAdd"] = sorted({capability_name(c) for c in context.add_capabilities})
    if spec.command is not None:
        config["Entrypoint"] = list(spec.command)
    if spec.args is not None:
        config["Cmd"] = list(spec.args)
    return config


def config_hash(config: dict[str, Any]) -> str:
    """Stable digest of a rendered config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def desired_container(agent: Agent, settings: Settings) -> tuple[dict[str, Any], str]:
    """The create body with its hash and generation labels added, and the hash."""
    config = render_container(agent, settings)
    digest = config_hash(config)
    config["Labels"] = {
        **config["Labels"],
        LABEL_HASH: digest,
        LABEL_GENERATION: str(agent.metadata.generation),
    }
    return config, digest
