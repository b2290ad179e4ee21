"""The local Docker daemon as a ``Runtime``: agents are containers.

Docker's vocabulary ends here. ``controller.runtime.docker.render`` turns an Agent into a ``ContainerCreate`` body and
its labels; ``controller.runtime.docker.driver`` performs the Engine API calls and classifies Docker's failures
into error codes; this module maps containers to ``Instance``s and Docker's events to ``RuntimeChange``s
of agents, and keeps the driver's caches honest (a failure or an event forgets what it contradicts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from controller.config import Settings
from controller.egress.gateway import EgressGateway
from controller.egress.policy import EGRESS_NETWORK_SUFFIX
from controller.model.agent import Agent, container_name
from controller.model.errors import CONTAINER_ERROR, IMAGE_NOT_FOUND, NETWORK_ERROR, SOCKET_ERROR, AgentError
from controller.model.runtime_class import GVISOR, RUNC
from controller.runtime.docker.cache import ContainerCache
from controller.runtime.docker.driver import (
    STREAM_OPEN,
    DockerDriver,
    DockerObserver,
    DriverNetworks,
    LiveDocker,
    NoopDockerObserver,
)
from controller.runtime.docker.render import (
    LABEL_AGENT,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    agent_network,
    desired_container,
    with_gateway,
    workspace_labels,
    workspace_volume,
)
from controller.runtime.docker.sandbox import remove_leftovers
from controller.runtime.interface import Desired, Instance, Runtime, RuntimeChange
from controller.tasks import cancel_all

log = logging.getLogger("parallax.runtime")

CONTAINER_ACTIONS = {"create", "start", "die", "oom", "stop", "kill", "destroy", "rename", "pause", "unpause", "update"}
FIRST_SYNC_WAIT_SECONDS = 5.0
RUNTIME_CLASSES_TTL_SECONDS = 30.0
"""How long admission trusts the daemon's list of runtimes (a runtime is added by a daemon reload)."""
IMAGE_ADDED = {"tag", "load", "pull", "import"}
IMAGE_REMOVED = {"delete", "untag"}


class DockerRuntime(DriverNetworks):
    """``Runtime`` on one Docker Engine (``DOCKER_SOCKET`` / ``DOCKER_HOST``)."""

    def __init__(self, settings: Settings, observer: DockerObserver | None = None) -> None:
        self.settings = settings
        self.observer: DockerObserver = observer or NoopDockerObserver()
        self.driver = DockerDriver(settings, observer=self.observer)
        self._live = LiveDocker(self.driver, own_client=True)
        self.cache = ContainerCache(self._inspect, on_size=self.observer.on_cache_size)
        self.egress = EgressGateway(settings)
        """The forward proxy of the internal networks of agents whose egress is restricted; the
        application tells it where records are and where denials go."""
        self._streaming = False
        self._verifying: asyncio.Task[None] | None = None
        self._first_sync = asyncio.Event()
        """Set once the first event stream has opened and listed, or failed: until then a read waits for
        it (client-go's WaitForCacheSync) rather than asking Docker for one agent's containers."""
        self._classes: tuple[float, frozenset[str]] | None = None
        self._classes_lock = asyncio.Lock()

    @property
    def live(self) -> LiveDocker:
        return self._live

    async def open(self) -> None:
        await self.driver.open()
        await self._live.open()

    async def close(self) -> None:
        if self._verifying is not None:
            await cancel_all([self._verifying])
        await self.egress.close()
        await self._live.close()
        await self.driver.close()

    async def ping(self) -> None:
        try:
            await self.driver.ping()
        except AgentError:
            self._first_sync.set()  # no stream is coming soon: reads go to Docker (and fail as it does)
            raise

    async def runtime_classes(self) -> frozenset[str] | None:
        """``runc``, and ``gvisor`` when the daemon has the runtime ``PARALLAX_GVISOR_RUNTIME``; asked
        through the API's own Docker client at most every ``RUNTIME_CLASSES_TTL_SECONDS``."""
        async with self._classes_lock:
            if self._classes is not None and time.monotonic() - self._classes[0] < RUNTIME_CLASSES_TTL_SECONDS:
                return self._classes[1]
            try:
                names = await self.driver.runtime_names(self._live.docker)
            except AgentError:
                return None
            classes = frozenset({RUNC, GVISOR} if self.settings.gvisor_runtime in names else {RUNC})
            self._classes = (time.monotonic(), classes)
            return classes

    def render(self, agent: Agent) -> Desired:
        body, digest = desired_container(agent, self.settings)
        return Desired(
            config_hash=digest, image=str(body["Image"]), body=body, network=agent_network(agent, self.settings)
        )

    async def agents_with_instances(self) -> set[str]:
        """From the cache while the event stream keeps it; a relist when it does not, or when the last
        one is ``PARALLAX_RELIST_SECONDS`` old (the safety net against an event Docker never sent)."""
        cache = self.cache
        if cache.synced and time.monotonic() - cache.listed_at < self.settings.relist_seconds:
            return cache.agents()
        return await self._relist("periodic" if cache.synced else "unsynced")

    async def _relist(self, reason: str) -> set[str]:
        listed = await self.driver.list_agent_names()
        if not self._streaming:
            return {item.agent for item in listed}  # no stream to keep a cache current: not one
        self.observer.on_relist(reason)
        if reason != "periodic":
            return self.cache.replace(listed)  # events were missed: inspect everything before it is read
        names = self.cache.replace(listed, missed_events=False)
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.create_task(self._verify(self.cache.unverified()), name="cache-verify")
        return names

    async def _verify(self, container_ids: list[str]) -> None:
        """The periodic safety net, one container at a time in the background: a burst of inspections
        would compete with the reconciles for Docker's slots."""
        differed = 0
        for container_id in container_ids:
            try:
                differed += await self.cache.verify(container_id)
            except AgentError:
                return  # the daemon is going away: the stream will say so and a relist follows
        if differed:
            log.warning("runtime cache: %d container(s) had changed without an event; re-read", differed)

    async def instances(self, agent: str) -> list[Instance]:
        if not self.cache.synced and not self._first_sync.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_sync.wait(), FIRST_SYNC_WAIT_SECONDS)
        if self.cache.synced:
            return [self._gateway_checked(i) for i in await self.cache.instances(agent)]
        return [self._gateway_checked(i) for i in await self.driver.list_containers(agent)]

    async def instance(self, instance_id: str) -> Instance | None:
        found = await self.cache.fresh(instance_id)
        return self._gateway_checked(found) if found is not None else None

    def _gateway_checked(self, instance: Instance) -> Instance:
        """An instance whose proxy variables name a gateway address its network no longer has (the network
        was removed and made again with another subnet) no longer matches any rendering: made again."""
        if not instance.egress_gateway:
            return instance
        now = next((self.egress.address(n) for n in instance.networks if self.egress.address(n)), None)
        if now is None or now == instance.egress_gateway:
            return instance
        return dataclasses.replace(instance, config_hash=f"{instance.config_hash} (egress gateway moved)")

    async def _inspect(self, instance_id: str) -> Instance | None:
        try:
            return await self.driver.inspect(instance_id)
        except AgentError as err:
            if err.code == SOCKET_ERROR:
                self.cache.unsynced()  # the stream is about to say so too; until then trust nothing
            raise

    async def image_present(self, image: str) -> bool:
        return await self.driver.image_exists(image)

    async def ensure_network(self, name: str) -> bool:
        internal = name.endswith(EGRESS_NETWORK_SUFFIX)
        if self.driver.knows_network(name) and (not internal or self.egress.address(name) is not None):
            return False  # known usable since the last network event: no call, no Docker slot taken
        try:
            created = await self.driver.ensure_network(name, internal=internal)
            if internal:
                await self._serve_egress(name)
            return created
        except AgentError:
            self.driver.forget_network(name)
            raise

    async def _serve_egress(self, network: str) -> str:
        """The gateway listening on ``network``'s bridge address (its address), or ``NETWORK_ERROR``."""
        address = await self.driver.network_gateway(network)
        try:
            await self.egress.serve(network, address)
        except OSError as exc:
            raise AgentError(
                NETWORK_ERROR,
                f"the egress gateway cannot listen on {address}:{self.settings.egress_port} for network "
                f"{network!r} ({exc.strerror or exc}); the controller must run on the Docker host (or in its "
                "network namespace) to enforce egress policies",
            ) from exc
        return address

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
        network = desired.network_of(agent)
        body = desired.body
        try:
            if network.endswith(EGRESS_NETWORK_SUFFIX):
                body = with_gateway(body, self.egress.address(network) or await self._serve_egress(network))
            container_id = await self.driver.create_container(name, body)
        except AgentError as err:
            self._forget_after(err, network)
            raise
        self.cache.changed(container_id, agent.name)
        return Instance(
            id=container_id,
            name=name,
            agent=agent.name,
            uid=agent.metadata.uid,
            config_hash=desired.config_hash,
            state="created",
            networks=(network,),
        )

    # Every write marks what it touched as changed in the cache (a removal forgets it), succeeded or not:
    # the next read of that agent inspects it afresh instead of deciding on what was true before.

    async def start(self, instance_id: str) -> None:
        try:
            await self.driver.start(instance_id)
        except AgentError as err:
            if err.code in (NETWORK_ERROR, IMAGE_NOT_FOUND):
                self.driver.forget_cached()  # which network or image it was, Docker does not say
            if err.code != SOCKET_ERROR:
                await self._remove_sandbox(instance_id)
            raise
        finally:
            self.cache.changed(instance_id)

    async def update(self, instance_id: str, desired: Desired) -> None:
        """Never asked (``Desired.updatable`` is False): a changed container is made again."""
        raise AgentError(CONTAINER_ERROR, f"container {instance_id[:12]} is recreated, not updated")

    async def stop(self, instance_id: str, grace_seconds: int) -> None:
        try:
            await self.driver.stop(instance_id, grace_seconds)
        finally:
            self.cache.changed(instance_id)

    async def pause(self, instance_id: str) -> None:
        try:
            await self.driver.set_paused(instance_id, True)
        finally:
            self.cache.changed(instance_id)

    async def unpause(self, instance_id: str) -> None:
        try:
            await self.driver.set_paused(instance_id, False)
        finally:
            self.cache.changed(instance_id)

    async def remove(self, instance_id: str) -> None:
        try:
            await self.driver.remove(instance_id)
        except AgentError:
            self.cache.changed(instance_id)
            raise
        self.cache.forget(instance_id)
        await self._remove_sandbox(instance_id)  # a failed start's, should a controller have died before

    async def _remove_sandbox(self, instance_id: str) -> None:
        """A runsc container's failed start leaves its sandbox behind (``controller.runtime.docker.sandbox``);
        only a full id names it, and only processes on this machine are looked at."""
        if len(instance_id) == 64:
            await remove_leftovers(instance_id)

    async def rename(self, instance_id: str, agent: str) -> None:
        try:
            await self.driver.rename(instance_id, container_name(agent))
        finally:
            self.cache.changed(instance_id)

    async def connect(self, instance_id: str, network: str, aliases: list[str]) -> None:
        try:
            await self.driver.connect_network(instance_id, network, aliases)
        except AgentError:
            self.driver.forget_network(network)
            raise
        finally:
            self.cache.changed(instance_id)

    async def recent_output(self, instance_id: str, lines: int) -> list[str]:
        return await self.driver.recent_output(instance_id, lines)

    def _forget_after(self, err: AgentError, network: str) -> None:
        if err.code == NETWORK_ERROR:
            self.driver.forget_network(network)
        elif err.code == IMAGE_NOT_FOUND:
            self.driver.forget_images()

    async def changes(self) -> AsyncIterator[RuntimeChange]:
        """Docker's event stream as changes of agents. What the driver remembers (networks, images) is
        forgotten first: events may have been missed while no stream was open."""
        self.driver.forget_cached()
        self.cache.unsynced()
        try:
            async for event in self.driver.events():
                if event == STREAM_OPEN:
                    self._streaming = True
                    try:
                        await self._relist("stream-open")
                    finally:
                        self._first_sync.set()
                    continue
                change = self._change(event)
                if change is not None:
                    yield change
        finally:
            self._streaming = False
            self.cache.unsynced()
            self._first_sync.set()

    def _change(self, event: dict[str, Any]) -> RuntimeChange | None:
        kind, action = event.get("Type"), str(event.get("Action", "")).split(":")[0]
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        if kind == "container" and action in CONTAINER_ACTIONS:
            if attributes.get(LABEL_MANAGED) == "true" and attributes.get(LABEL_INSTANCE) == self.settings.instance:
                agent = attributes.get(LABEL_AGENT)
                container_id = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
                if container_id and action == "destroy":
                    self.cache.forget(container_id)
                elif container_id:
                    self.cache.changed(container_id, agent)
                if agent:
                    return RuntimeChange("instance", agent=agent)
        elif kind == "network" and action == "destroy":
            network = attributes.get("name")
            if network:
                self.driver.forget_network(network)
                self.cache.changed_on_network(network)
                self.egress.stop_serving(network)
            return RuntimeChange("network-removed", network=network)
        elif kind == "network" and action in ("connect", "disconnect"):
            container_id = str(attributes.get("container") or "")
            self.cache.changed(container_id)  # its networks changed
            self.egress.network_changed(str(attributes.get("name") or ""))
            if action == "connect":
                return None
            return RuntimeChange(
                "network-detached",
                agent=self.cache.agent_of(container_id),
                network=attributes.get("name"),
                instance_id=container_id,
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
