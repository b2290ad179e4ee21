"""The local Docker daemon as a ``Runtime``: agents are containers.

Docker's vocabulary ends here. ``controller.runtime.docker.render`` turns an Agent into a ``ContainerCreate`` body and
its labels; ``controller.runtime.docker.driver`` performs the Engine API calls and classifies Docker's failures
into error codes; this module maps containers to ``Instance``s and Docker's events to ``RuntimeChange``s
of agents, and keeps the driver's caches honest (a failure or an event forgets what it contradicts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from controller.config import Settings
from controller.model.agent import Agent, container_name
from controller.model.errors import CONTAINER_ERROR, IMAGE_NOT_FOUND, NETWORK_ERROR, AgentError
from controller.runtime.docker.driver import DockerDriver, DockerObserver, LiveDocker
from controller.runtime.docker.render import (
    LABEL_AGENT,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    desired_container,
    workspace_labels,
    workspace_volume,
)
from controller.runtime.interface import Desired, Instance, ManagedNetwork, Runtime, RuntimeChange

CONTAINER_ACTIONS = {"create", "start", "die", "oom", "stop", "kill", "destroy", "rename", "pause", "unpause", "update"}
IMAGE_ADDED = {"tag", "load", "pull", "import"}
IMAGE_REMOVED = {"delete", "untag"}


class DockerRuntime:
    """``Runtime`` on one Docker Engine (``DOCKER_SOCKET`` / ``DOCKER_HOST``)."""

    def __init__(self, settings: Settings, observer: DockerObserver | None = None) -> None:
        self.settings = settings
        self.driver = DockerDriver(settings, observer=observer)
        self._live = LiveDocker(self.driver, own_client=True)

    @property
    def live(self) -> LiveDocker:
        return self._live

    async def open(self) -> None:
        await self.driver.open()
        await self._live.open()

    async def close(self) -> None:
        await self._live.close()
        await self.driver.close()

    async def ping(self) -> None:
        await self.driver.ping()

    def render(self, agent: Agent) -> Desired:
        body, digest = desired_container(agent, self.settings)
        return Desired(config_hash=digest, image=str(body["Image"]), body=body)

    async def agents_with_instances(self) -> set[str]:
        return await self.driver.list_agent_names()

    async def instances(self, agent: str) -> list[Instance]:
        return await self.driver.list_containers(agent)

    async def instance(self, instance_id: str) -> Instance | None:
        return await self.driver.inspect(instance_id)

    async def image_present(self, image: str) -> bool:
        return await self.driver.image_exists(image)

    async def ensure_network(self, name: str) -> bool:
        try:
            return await self.driver.ensure_network(name)
        except AgentError:
            self.driver.forget_network(name)
            raise

    async def ensure_workspace(self, agent: Agent) -> None:
        await self.driver.ensure_volume(
            workspace_volume(agent.name, self.settings.instance), workspace_labels(agent, self.settings)
        )

    async def remove_workspace(self, agent: Agent) -> None:
        await self.driver.remove_volume(
            workspace_volume(agent.name, self.settings.instance), workspace_labels(agent, self.settings)
        )

    async def create(self, agent: Agent, desired: Desired) -> Instance:
        name = container_name(agent.name)
        try:
            container_id = await self.driver.create_container(name, desired.body)
        except AgentError as err:
            self._forget_after(err, agent.spec.network)
            raise
        return Instance(
            id=container_id,
            name=name,
            agent=agent.name,
            uid=agent.metadata.uid,
            config_hash=desired.config_hash,
            state="created",
            networks=(agent.spec.network,),
        )

    async def start(self, instance_id: str) -> None:
        try:
            await self.driver.start(instance_id)
        except AgentError as err:
            if err.code in (NETWORK_ERROR, IMAGE_NOT_FOUND):
                self.driver.forget_cached()  # which network or image it was, Docker does not say
            raise

    async def update(self, instance_id: str, desired: Desired) -> None:
        """Never asked (``Desired.updatable`` is False): a changed container is made again."""
        raise AgentError(CONTAINER_ERROR, f"container {instance_id[:12]} is recreated, not updated")

    async def stop(self, instance_id: str, grace_seconds: int) -> None:
        await self.driver.stop(instance_id, grace_seconds)

    async def remove(self, instance_id: str) -> None:
        await self.driver.remove(instance_id)

    async def rename(self, instance_id: str, agent: str) -> None:
        await self.driver.rename(instance_id, container_name(agent))

    async def connect(self, instance_id: str, network: str, aliases: list[str]) -> None:
        try:
            await self.driver.connect_network(instance_id, network, aliases)
        except AgentError:
            self.driver.forget_network(network)
            raise

    async def recent_output(self, instance_id: str, lines: int) -> list[str]:
        return await self.driver.recent_output(instance_id, lines)

    async def managed_networks(self) -> list[ManagedNetwork]:
        return [ManagedNetwork(str(n["Id"]), str(n.get("Name", ""))) for n in await self.driver.managed_networks()]

    async def network_in_use(self, network_id: str) -> bool:
        return await self.driver.network_in_use(network_id)

    async def remove_network(self, network_id: str) -> None:
        await self.driver.remove_network(network_id)

    def _forget_after(self, err: AgentError, network: str) -> None:
        if err.code == NETWORK_ERROR:
            self.driver.forget_network(network)
        elif err.code == IMAGE_NOT_FOUND:
            self.driver.forget_images()

    async def changes(self) -> AsyncIterator[RuntimeChange]:
        """Docker's event stream as changes of agents. What the driver remembers (networks, images) is
        forgotten first: events may have been missed while no stream was open."""
        self.driver.forget_cached()
        async for event in self.driver.events():
            change = self._change(event)
            if change is not None:
                yield change

    def _change(self, event: dict[str, Any]) -> RuntimeChange | None:
        kind, action = event.get("Type"), str(event.get("Action", "")).split(":")[0]
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        if kind == "container" and action in CONTAINER_ACTIONS:
            if attributes.get(LABEL_MANAGED) == "true" and attributes.get(LABEL_INSTANCE) == self.settings.instance:
                agent = attributes.get(LABEL_AGENT)
                if agent:
                    return RuntimeChange("instance", agent=agent)
        elif kind == "network" and action == "destroy":
            network = attributes.get("name")
            if network:
                self.driver.forget_network(network)
            return RuntimeChange("network-removed", network=network)
        elif kind == "network" and action == "disconnect":
            return RuntimeChange(
                "network-detached", network=attributes.get("name"), instance_id=attributes.get("container")
            )
        elif kind == "image" and action in IMAGE_REMOVED:
            self.driver.forget_images()
            return RuntimeChange("image-removed")
        elif kind == "image" and action in IMAGE_ADDED:
            return RuntimeChange("image-added")
        return None


def _is_a_runtime(runtime: DockerRuntime) -> Runtime:
    """mypy checks here that the Docker runtime implements the whole ``Runtime`` interface."""
    return runtime
