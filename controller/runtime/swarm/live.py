"""Live views of an agent on a swarm: logs through the manager (a service's logs, followed or not);
stats and stdin through the Docker endpoint of the node its task runs on (``PARALLAX_SWARM_NODES``, or
the node's label ``parallax.endpoint``), since only that node's daemon knows the task's container. A
node without an endpoint is a clear error naming it, at once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiodocker

from controller.model.agent import Agent
from controller.model.errors import AgentError
from controller.runtime.docker.driver import LiveDocker, _DockerCall
from controller.runtime.docker.render import workspace_labels, workspace_volume
from controller.runtime.interface import ExecCommand, ExecProcess, NotRunning, PathStat
from controller.runtime.swarm.driver import SwarmDriver
from controller.runtime.swarm.nodes import NodeClients
from controller.runtime.swarm.tasks import running_container


class _OnNode(LiveDocker):
    """The local runtime's live views, on one node's daemon."""

    def __init__(self, driver: SwarmDriver, client: aiodocker.Docker) -> None:
        super().__init__(driver)
        self._client = client

    @property
    def docker(self) -> aiodocker.Docker:
        return self._client


class _ServiceLogs(LiveDocker):
    """Logs of a service, through the manager (``instance_id`` is the service's ID)."""

    def logs_path(self, container_id: str) -> str:
        return f"services/{container_id}/logs"


async def container_output(driver: SwarmDriver, client: aiodocker.Docker, container_id: str, lines: int) -> list[str]:
    """A task container's last ``lines`` lines, from its node's daemon (``client``)."""
    live = _OnNode(driver, client)
    return [line async for line in live.logs(container_id, tail=str(lines), since=None, timestamps=False, follow=False)]


class LiveSwarm:
    def __init__(self, driver: SwarmDriver) -> None:
        self.driver = driver
        self._logs = _ServiceLogs(driver, own_client=True)
        self._nodes = NodeClients(driver.settings)

    async def open(self) -> None:
        await self._logs.open()

    async def close(self) -> None:
        await self._logs.close()
        await self._nodes.close()

    def open_logs(
        self, instance_id: str, *, tail: str, since: int | None, timestamps: bool, follow: bool
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._logs.open_logs(instance_id, tail=tail, since=since, timestamps=timestamps, follow=follow)

    async def recent_output(self, instance_id: str, lines: int) -> list[str]:
        """The service's last ``lines`` lines, through the manager (which asks the task's node)."""
        async with self._logs.open_logs(
            instance_id, tail=str(lines), since=None, timestamps=False, follow=False
        ) as found:
            return [line async for line in found]

    async def _on_node(self, instance_id: str) -> tuple[_OnNode, str]:
        """The live views of the node running the service's task, and the task's container ID."""
        tasks = await self.driver.tasks([instance_id])
        found = running_container(tasks)
        if found is None:
            raise NotRunning(f"service {instance_id[:12]} has no running task")
        node_id, container = found
        nodes = {str(n["ID"]): n for n in await self.driver.nodes()}
        return _OnNode(self.driver, self._nodes.client(nodes.get(node_id) or {"ID": node_id})), container

    async def stats(self, instance_id: str) -> dict[str, Any]:
        live, container = await self._on_node(instance_id)
        return await live.stats(container)

    async def write_stdin(self, instance_id: str, data: bytes) -> None:
        live, container = await self._on_node(instance_id)
        await live.write_stdin(container, data)

    @contextlib.asynccontextmanager
    async def open_exec(self, instance_id: str, command: ExecCommand) -> AsyncIterator[ExecProcess]:
        live, container = await self._on_node(instance_id)
        async with live.open_exec(container, command) as process:
            yield process

    async def stat_path(self, instance_id: str, path: str) -> PathStat | None:
        live, container = await self._on_node(instance_id)
        return await live.stat_path(container, path)

    @contextlib.asynccontextmanager
    async def open_archive(self, instance_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        live, container = await self._on_node(instance_id)
        async with live.open_archive(container, path) as chunks:
            yield chunks

    async def file_owner(self, instance_id: str) -> tuple[int, int]:
        live, container = await self._on_node(instance_id)
        return await live.file_owner(container)

    async def put_archive(self, instance_id: str, directory: str, body: AsyncIterable[bytes]) -> None:
        live, container = await self._on_node(instance_id)
        await live.put_archive(container, directory, body)

    async def container_on_node(self, instance_id: str) -> tuple[aiodocker.Docker, str]:
        """The running task's node client and container ID (for tests and diagnostics)."""
        live, container = await self._on_node(instance_id)
        return live.docker, container

    async def remove_volumes(self, agent: Agent) -> None:
        """Remove the agent's workspace volume on every node with an endpoint (a node that is down, or
        still has the volume in use, keeps it: it is removed by hand there)."""
        name = workspace_volume(agent.name, self.driver.settings.instance)
        labels = workspace_labels(agent, self.driver.settings)
        for node in await self.driver.nodes():
            if self._nodes.endpoint(node) is None:
                continue
            client = self._nodes.client(node)
            doing = f"removing volume {name}"
            with contextlib.suppress(AgentError), _DockerCall(doing, absent_ok=True, tolerate=(409,)):
                volume = await client.volumes.get(name)  # type: ignore[no-untyped-call]
                found = (await volume.show()).get("Labels") or {}
                if all(found.get(key) == value for key, value in labels.items()):
                    await volume.delete()
