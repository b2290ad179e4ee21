"""All Swarm manager I/O of the swarm runtime: services, tasks, nodes and overlay networks.

``SwarmDriver`` is the local runtime's ``DockerDriver`` (same client, timeouts, concurrency slots, call
timing and error classification) with the calls of Swarm mode added, and networks made as attachable
overlays instead of bridges. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from controller.model.errors import CONTAINER_ERROR, NETWORK_ERROR, SOCKET_ERROR, AgentError
from controller.runtime.docker.driver import DockerDriver, _DockerCall
from controller.runtime.docker.driver import _timed as _docker_timed
from controller.runtime.docker.render import LABEL_INSTANCE, LABEL_MANAGED

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _timed(
    method: Callable[Concatenate[SwarmDriver, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[SwarmDriver, _P], Coroutine[Any, Any, _R]]:
    """The Docker driver's call timing and concurrency slots, for the swarm driver's own calls."""
    timed: Callable[Concatenate[SwarmDriver, _P], Coroutine[Any, Any, _R]] = _docker_timed(cast(Any, method))
    return timed


class SwarmDriver(DockerDriver):
    """The Engine API of a Swarm manager (``DOCKER_SOCKET``)."""

    async def _send(self, path: str, method: str = "GET", body: Any = None, **params: str) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        return await self.docker._query_json(path, method=method, data=data, params=params or None, headers=headers)

    def label_filters(self, **labels: str) -> str:
        return self._filters(**labels)

    @_timed
    async def swarm_node_id(self) -> str:
        """The manager's own node ID; an engine not in a swarm, or not a manager of it, is refused."""
        with _DockerCall("asking the Docker daemon about its swarm", SOCKET_ERROR):
            info = await self._send("info")
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise AgentError(
                SOCKET_ERROR,
                f"PARALLAX_RUNTIME=swarm needs DOCKER_SOCKET at a swarm manager; {self.settings.docker_socket} "
                f"is {'a worker' if swarm.get('LocalNodeState') == 'active' else 'not in a swarm'}",
            )
        return str(swarm.get("NodeID", ""))

    @_timed
    async def services(self, /, **labels: str) -> list[dict[str, Any]]:
        """This controller instance's services (optionally of one agent)."""
        with _DockerCall("listing services", SOCKET_ERROR):
            found = await self._send("services", filters=self._filters(**labels))
        return list(found or [])

    @_timed
    async def all_services(self) -> list[dict[str, Any]]:
        with _DockerCall("listing services", SOCKET_ERROR):
            found = await self._send("services")
        return list(found or [])

    @_timed
    async def service(self, service_id: str) -> dict[str, Any] | None:
        with _DockerCall(f"inspecting service {service_id[:12]}", SOCKET_ERROR, absent_ok=True):
            return dict(await self._send(f"services/{service_id}"))
        return None

    @_timed
    async def tasks(self, service_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Tasks of the given services (every task when None). A service removed meanwhile makes the
        manager refuse the filter (404): then every task is listed and those of the services kept."""
        params = {"filters": json.dumps({"service": service_ids})} if service_ids else {}
        found = None
        with _DockerCall("listing tasks", SOCKET_ERROR, absent_ok=True):
            found = await self._send("tasks", **params)
        if found is None:
            with _DockerCall("listing tasks", SOCKET_ERROR):
                found = await self._send("tasks")
            wanted = set(service_ids or ())
            found = [t for t in found or [] if t.get("ServiceID") in wanted]
        return list(found or [])

    @_timed
    async def nodes(self) -> list[dict[str, Any]]:
        with _DockerCall("listing swarm nodes", SOCKET_ERROR):
            found = await self._send("nodes")
        return list(found or [])

    @_timed
    async def create_service(self, spec: dict[str, Any]) -> str:
        """Create a service; the image is not resolved against a registry (API ≥ 1.30 leaves that to
        clients, and none is asked here): each node runs the image it has."""
        with _DockerCall(f"creating service {spec.get('Name')}", classify=True):
            created = await self._send("services/create", "POST", spec)
        return str(created["ID"])

    @_timed
    async def update_service(self, service_id: str, version: int, spec: dict[str, Any]) -> None:
        with _DockerCall(f"updating service {service_id[:12]}", classify=True):
            await self._send(f"services/{service_id}/update", "POST", spec, version=str(version))

    @_timed
    async def remove_service(self, service_id: str) -> None:
        with _DockerCall(f"removing service {service_id[:12]}", CONTAINER_ERROR, absent_ok=True):
            await self._send(f"services/{service_id}", "DELETE")

    async def _ensure_network(self, name: str, internal: bool = False) -> bool:
        """An attachable overlay (tasks of services join it; so can a node's own containers). Never
        internal: admission refuses restricted egress on the swarm runtime."""
        with _DockerCall(f"inspecting network {name!r}", NETWORK_ERROR, absent_ok=True):
            data = await self._send(f"networks/{name}")
            if data.get("Driver") != "overlay" or not data.get("Attachable"):
                raise AgentError(
                    NETWORK_ERROR,
                    f"network {name!r} exists with driver {data.get('Driver')!r}"
                    f"{'' if data.get('Attachable') else ', not attachable'}: swarm agents need an attachable overlay",
                )
            return False
        with _DockerCall(f"creating overlay network {name!r}", NETWORK_ERROR, tolerate=(409,)):
            await self._send(
                "networks/create",
                "POST",
                {
                    "Name": name,
                    "Driver": "overlay",
                    "Attachable": True,
                    "CheckDuplicate": True,
                    "Labels": {LABEL_MANAGED: "true", LABEL_INSTANCE: self.settings.instance},
                },
            )
            return True
        return False

    @_timed
    async def network_in_use(self, network_id: str) -> bool:
        """A service (anyone's) asks for it, or a container on the manager is attached to it."""
        with _DockerCall("inspecting network", NETWORK_ERROR, absent_ok=True):
            data = await self._send(f"networks/{network_id}")
            if data.get("Containers"):
                return True
            for service in await self.all_services():
                targets = {n.get("Target") for n in (service["Spec"].get("TaskTemplate") or {}).get("Networks") or []}
                if targets & {data.get("Id"), data.get("Name")}:
                    return True
            return False
        return False

    async def wait_reaped(self, service_id: str, seconds: float) -> None:
        """Until no task of the service is waiting to be removed (desired state ``remove``: scaled away)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            if not any(t.get("DesiredState") == "remove" for t in await self.tasks([service_id])):
                return
            await asyncio.sleep(0.1)

    async def wait_stopped(self, service_id: str, seconds: float) -> None:
        """Until no task of the service runs any more (at most ``seconds``)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            tasks = await self.tasks([service_id])
            if not any(t.get("Status", {}).get("State") in ("running", "starting", "preparing") for t in tasks):
                return
            await asyncio.sleep(0.2)
