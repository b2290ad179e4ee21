"""A Swarm service and its tasks as the runtime interface's ``Instance``: pure, no I/O.

Swarm never restarts a task here (``RestartPolicy: none``): the service's newest task is the agent's
instance, and its state maps onto the states the reconciler knows, so ``decide`` works unchanged:

| the newest task | Instance state |
| --- | --- |
| none yet, or new … starting (being scheduled and started) | ``starting`` (the scheduler's word, classified) |
| running on a node that is up | ``running`` |
| complete / failed / shutdown (exited, or stopped by us) | ``exited``, with its exit code |
| rejected (no such image on the node, a network it cannot join) | ``created``, with the classified error |
| on a node that is down, or orphaned | ``lost``: made again elsewhere |
| the service scaled to 0 (stopped by the controller) | ``exited`` |
"""

from __future__ import annotations

from typing import Any

from controller.model.agent import container_name
from controller.model.errors import (
    CONTAINER_ERROR,
    IMAGE_NOT_FOUND,
    NETWORK_ERROR,
    RESOURCE_LIMIT,
    AgentError,
)
from controller.runtime.docker.render import LABEL_AGENT, LABEL_HASH, LABEL_UID
from controller.runtime.interface import Instance
from controller.runtime.swarm.render import LABEL_NETWORK

STARTING = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
EXITED = {"complete", "failed", "shutdown"}
LOST = {"orphaned"}


def classify_task_error(message: str) -> str:
    """The error code of a task's ``Status.Err``."""
    lowered = message.lower()
    if "no such image" in lowered or ("image" in lowered and "not found" in lowered):
        return IMAGE_NOT_FOUND
    if "insufficient resources" in lowered or "no suitable node" in lowered:
        return RESOURCE_LIMIT
    if "network" in lowered or "endpoint" in lowered or "address pool" in lowered:
        return NETWORK_ERROR
    return CONTAINER_ERROR


def task_error(task: dict[str, Any]) -> AgentError | None:
    status = task.get("Status") or {}
    err = str(status.get("Err") or "")
    if not err:
        return None
    node = task.get("NodeID")
    where = f" on node {node[:12]}" if node else ""
    return AgentError(classify_task_error(err), f"task {task['ID'][:12]} {status.get('State')}{where}: {err}")


def newest_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task that is the agent's instance now: the newest one (a replacement is always newer)."""
    if not tasks:
        return None
    return max(tasks, key=lambda t: (str(t.get("CreatedAt", "")), int((t.get("Version") or {}).get("Index", 0))))


def replicas(service: dict[str, Any]) -> int:
    return int(((service["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0))


def instance_of(service: dict[str, Any], tasks: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> Instance:
    """``service`` (inspected) with its ``tasks`` and the swarm's ``nodes`` by ID, as an ``Instance``."""
    spec = service["Spec"]
    labels = spec.get("Labels") or {}
    agent = str(labels.get(LABEL_AGENT, ""))
    name = str(spec.get("Name", ""))
    task = newest_task(tasks)
    status = (task or {}).get("Status") or {}
    node = nodes.get(str((task or {}).get("NodeID", ""))) or {}
    hostname = str((node.get("Description") or {}).get("Hostname", ""))
    node_up = (node.get("Status") or {}).get("State") == "ready"
    observed = str(status.get("State", ""))
    wanted = str((task or {}).get("DesiredState", ""))
    err = task_error(task) if task else None
    started = str(task.get("CreatedAt")) if task else None
    finished = str(status.get("Timestamp")) if observed in EXITED | {"rejected"} else None
    exit_code = int((status.get("ContainerStatus") or {}).get("ExitCode") or 0)
    state: str
    if task is None:
        state = "starting" if replicas(service) > 0 else "exited"
    elif observed in LOST or (node and not node_up and observed not in EXITED | {"rejected"}):
        state = "lost"
    elif replicas(service) == 0 and observed not in ("running",):
        state = "exited"
    elif observed == "running":
        state = "running"
        started = str(status.get("Timestamp"))
    elif observed in STARTING:
        # "ready" is a task waiting for the one it replaces to stop (an update); shut down before it ran,
        # it is being replaced (the service still wants its replica)
        state = "starting" if wanted in ("running", "ready") or replicas(service) > 0 else "exited"
    elif observed == "rejected":
        state = "created"
    else:
        state = "exited"
    return Instance(
        id=str(service["ID"]),
        name=name,
        agent=agent,
        uid=str(labels.get(LABEL_UID, "")),
        config_hash=str(labels.get(LABEL_HASH, "")),
        state=state,
        exit_code=exit_code,
        started_at=started,
        finished_at=finished,
        error=err.message if err else "",
        error_code=err.code if err else "",
        networks=(str(labels.get(LABEL_NETWORK, "")),),
        misnamed=name != container_name(agent),
        node=hostname,
    )


def running_container(tasks: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(node ID, container ID) of the service's running task, if one runs."""
    for task in sorted(tasks, key=lambda t: str(t.get("CreatedAt", "")), reverse=True):
        status = task.get("Status") or {}
        container = (status.get("ContainerStatus") or {}).get("ContainerID")
        if status.get("State") == "running" and container:
            return str(task.get("NodeID", "")), str(container)
    return None
