"""Docker Swarm mode as a ``Runtime``: each agent is a service with one replica.

The reconciler's verbs on a service: ``create`` makes the service (one replica, so Swarm schedules its task
at once); ``start`` makes sure a task is wanted (scales a stopped service back to one replica, or forces a
new task when the newest one ended); ``stop`` scales to zero and waits for the task to stop; ``remove``
removes the service. The service's newest task is the instance (``controller.runtime.swarm.tasks``).
Changes are noticed by polling the manager (services, tasks, nodes) every ``PARALLAX_SWARM_POLL_SECONDS``:
Swarm's event stream says nothing of tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from controller.config import Settings
from controller.model.agent import Agent, container_name
from controller.model.errors import CONTAINER_ERROR, NETWORK_ERROR, AgentError
from controller.model.runtime_class import RUNC
from controller.model.timestamps import parse_runtime_time
from controller.runtime.docker.driver import DockerObserver, DriverNetworks, NoopDockerObserver, set_paused
from controller.runtime.docker.render import LABEL_AGENT
from controller.runtime.interface import Desired, Instance, Runtime, RuntimeChange
from controller.runtime.swarm.driver import SwarmDriver
from controller.runtime.swarm.live import LiveSwarm, container_output
from controller.runtime.swarm.nodes import NodeFacts, hostname
from controller.runtime.swarm.render import desired_service
from controller.runtime.swarm.tasks import instance_of, newest_task, replicas, running_container, task_error

log = logging.getLogger("parallax.runtime.swarm")

NEW_TASK_SECONDS = 5.0
REAP_SECONDS = 10.0
STARTING_POLL_SECONDS = 0.15

REJECTION_RETRY_SECONDS = 5.0
"""A task a node rejected (no such image there, a network it could not join) is tried again, as a new
task, once it is this old; before, ``start`` reports the rejection."""


class SwarmRuntime(DriverNetworks):
    """``Runtime`` on a Docker Swarm, through one of its managers (``DOCKER_SOCKET``)."""

    driver: SwarmDriver

    def __init__(self, settings: Settings, observer: DockerObserver | None = None) -> None:
        self.settings = settings
        self.driver = SwarmDriver(settings, observer=observer)
        self._live = LiveSwarm(self.driver)
        self.observer: DockerObserver = observer or NoopDockerObserver()
        self.facts = NodeFacts(settings)  # its own node clients: never the live views'
        self.reported_nodes: set[str] = set()
        self._nodes_seen: dict[str, dict[str, Any]] = {}
        self._nodes_seen_at = float("-inf")
        # The last poll's instances by agent, and when it began: a reconcile reads them instead of asking
        # the manager again, unless this runtime changed the agent's service since (``_touched``).
        self._polled: dict[str, list[Instance]] = {}
        self._polled_at = float("-inf")
        self._touched: dict[str, float] = {}
        # Services made here and not yet started: Swarm schedules a new service's task by itself, so the
        # reconciler's start (and its look at the instance after) needs no call to the manager.
        self._just_created: dict[str, tuple[Instance, float]] = {}
        # Services whose running task's container this runtime paused (service ID -> container ID): Swarm
        # knows nothing of a paused container (its task stays "running"), so the instance says "paused"
        # from here. A controller restart forgets it; the reconciler then pauses again (a no-op).
        self._paused: dict[str, str] = {}
        # The running task's node and container, by service ID, as the last look at its tasks saw them: a
        # new agent's credentials check reads that container's log tail from its node, a few milliseconds,
        # where the manager's service logs take a round of the swarm's log broker.
        self._containers: dict[str, tuple[dict[str, Any], str]] = {}
        # Set by every change this runtime makes: the change poll, sleeping its interval, looks again
        # within STARTING_POLL_SECONDS instead (a service just made is being scheduled).
        self._kick = asyncio.Event()

    @property
    def live(self) -> LiveSwarm:
        return self._live

    async def open(self) -> None:
        await self.driver.open()
        await self._live.open()

    async def close(self) -> None:
        await self._live.close()
        await self.facts.close()
        await self.driver.close()

    async def ping(self) -> None:
        await self.driver.swarm_node_id()

    async def runtime_classes(self) -> frozenset[str] | None:
        """runc only: a Swarm service spec (API 1.41) cannot choose an OCI runtime."""
        return frozenset({RUNC})

    def render(self, agent: Agent) -> Desired:
        spec, digest = desired_service(agent, self.settings, container_name(agent.name))
        image = str(spec["TaskTemplate"]["ContainerSpec"]["Image"])
        return Desired(config_hash=digest, image=image, body=spec, updatable=True)

    async def _nodes(self, *, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """The swarm's nodes by ID: as the change poll last saw them (at most two polls ago), or asked now."""
        loop = asyncio.get_running_loop()
        if fresh or loop.time() - self._nodes_seen_at > 2 * self.settings.swarm_poll_seconds:
            self._nodes_seen = {str(n["ID"]): n for n in await self.driver.nodes()}
            self._nodes_seen_at = loop.time()
        return self._nodes_seen

    async def _instances(self, services: list[dict[str, Any]]) -> list[Instance]:
        if not services:
            return []
        tasks = await self.driver.tasks([s["ID"] for s in services])
        nodes = await self._nodes()
        found = []
        for service in services:
            own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
            found.append(await self._oom_checked(self._of(service, own, nodes), own, nodes))
        return found

    async def _oom_checked(
        self, found: Instance, tasks: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]
    ) -> Instance:
        """An ended task with exit code 137 asked of its node: killed by the kernel's OOM killer (the
        manager says only "non-zero exit (137)"), or by a SIGKILL."""
        if found.state != "exited" or found.exit_code != 137:
            return found
        task, node, container = _task_container(tasks, nodes)
        if task is None or node is None or not container:
            return found
        if await self.facts.oom_killed(str(task["ID"]), node, container):
            return dataclasses.replace(found, oom_killed=True)
        return found

    async def _probe_nodes(self, tasks: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> None:
        """Ask each ready node not asked yet, through one of its running task containers, whether its
        daemon gives task processes no-new-privileges (the metric says; a node without is logged)."""
        asked: set[str] = set()
        for task in tasks:
            status = task.get("Status") or {}
            node = nodes.get(str(task.get("NodeID", "")))
            container = (status.get("ContainerStatus") or {}).get("ContainerID")
            if node is None or not container or status.get("State") != "running":
                continue
            host = hostname(node)
            if host in asked or host in self.facts.no_new_privileges:
                continue
            asked.add(host)
            enforced = await self.facts.probe_no_new_privileges(node, str(container))
            if enforced is not None:
                self.observer.on_node_no_new_privileges(host, enforced)

    def _of(self, service: dict[str, Any], tasks: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> Instance:
        """``instance_of``, in state ``paused`` when its running task's container is the one paused here."""
        found = instance_of(service, tasks, nodes)
        running = running_container(tasks)
        if running is not None and running[0] in nodes:
            self._containers[found.id] = (nodes[running[0]], running[1])
        else:
            self._containers.pop(found.id, None)
        paused = self._paused.get(found.id)
        if paused is None:
            return found
        if found.state != "running" or running is None or running[1] != paused:
            del self._paused[found.id]  # the paused task ended or was replaced
            return found
        return dataclasses.replace(found, state="paused")

    async def agents_with_instances(self) -> set[str]:
        found = await self.driver.services()
        return {str(s["Spec"]["Labels"][LABEL_AGENT]) for s in found if s["Spec"].get("Labels", {}).get(LABEL_AGENT)}

    async def instances(self, agent: str) -> list[Instance]:
        polled = self._polled.get(agent, [])
        if self._fresh(agent, polled):
            return list(polled)
        return await self._instances(await self.driver.services(**{LABEL_AGENT: agent}))

    def _fresh(self, agent: str, polled: list[Instance]) -> bool:
        """The last poll began after this runtime's last change to the agent, and not two polls ago."""
        at = self._polled_at
        if asyncio.get_running_loop().time() - at > 2 * self.settings.swarm_poll_seconds:
            return False
        keys = [agent, *(i.id for i in polled)]
        return all(self._touched.get(key, float("-inf")) < at for key in keys)

    def _made_now(self, instance_id: str) -> bool:
        """Made by ``create`` within the last few seconds (what a reconcile's start follows)."""
        made = self._just_created.get(instance_id)
        if made is not None and loop_time() - made[1] > NEW_TASK_SECONDS:
            del self._just_created[instance_id]
            return False
        return made is not None

    def _touch(self, *keys: str) -> None:
        now = asyncio.get_running_loop().time()
        for key in keys:
            self._touched[key] = now
        self._kick.set()

    async def instance(self, instance_id: str) -> Instance | None:
        if self._made_now(instance_id):
            return self._just_created.pop(instance_id)[0]  # starting; the change poll reports what it becomes
        service = await self.driver.service(instance_id)
        if service is None:
            return None
        return (await self._instances([service]))[0]

    async def image_present(self, image: str) -> bool:
        """Each node has images of its own, and which node a task lands on is Swarm's choice: a node
        without the image rejects the task, and that is reported then (IMAGE_NOT_FOUND)."""
        return True

    async def ensure_network(self, name: str) -> bool:
        try:
            return await self.driver.ensure_network(name)
        except AgentError:
            self.driver.forget_network(name)
            raise

    async def ensure_workspace(self, agent: Agent) -> None:
        """Nothing to do here: the workspace is a volume of the node the task runs on, made there (with
        its labels) when the task starts."""

    async def remove_workspace(self, agent: Agent) -> None:
        """The workspace volumes on the nodes this controller has endpoints for (best effort)."""
        await self._live.remove_volumes(agent)

    async def create(self, agent: Agent, desired: Desired) -> Instance:
        if agent.spec.runtime_class_name != RUNC:  # admitted under the local runtime, before a switch
            raise AgentError(
                CONTAINER_ERROR,
                f"spec.runtimeClassName: {agent.spec.runtime_class_name} cannot run on the swarm runtime "
                "(a Swarm service cannot choose its OCI runtime); set it to runc",
            )
        self._touch(agent.name)
        try:
            service_id = await self.driver.create_service(desired.body)
        except AgentError as err:
            if err.code == NETWORK_ERROR:
                self.driver.forget_network(agent.spec.network)
            raise
        self._kick.set()  # again: the poll may have looked between the touch and the manager's answer
        made = Instance(
            id=service_id,
            name=container_name(agent.name),
            agent=agent.name,
            uid=agent.metadata.uid,
            config_hash=desired.config_hash,
            state="created",
            networks=(agent.spec.network,),
        )
        self._just_created[service_id] = (dataclasses.replace(made, state="starting"), loop_time())
        return made

    async def _update(self, service: dict[str, Any], change: dict[str, Any]) -> None:
        spec = service["Spec"]
        for key, value in change.items():
            if key == "ForceUpdate":
                spec["TaskTemplate"]["ForceUpdate"] = value
            else:
                spec[key] = value
        await self._send_update(service, spec)

    async def _send_update(self, service: dict[str, Any], spec: dict[str, Any]) -> None:
        """``service update`` of ``service`` (as inspected) to ``spec``; the change poll looks again soon."""
        self._touch(service["ID"])
        await self.driver.update_service(service["ID"], int(service["Version"]["Index"]), spec)
        self._kick.set()  # again: the poll may have looked between the touch and the manager's answer

    async def start(self, instance_id: str) -> None:
        """A task wanted: one replica, and a new task if the newest has ended (a restart)."""
        if self._made_now(instance_id):
            return  # made with one replica a moment ago: Swarm is placing its task
        service = await self._service(instance_id)
        tasks = await self.driver.tasks([instance_id])
        task = newest_task(tasks)
        if replicas(service) == 0:
            await self._update(service, {"Mode": {"Replicated": {"Replicas": 1}}})
        elif instance_of(service, tasks, await self._nodes()).state in ("starting", "running"):
            return  # a task is wanted already: Swarm is starting it, or it runs
        else:
            if task is not None and task["Status"]["State"] == "rejected":
                err = task_error(task)
                age = _age(task["Status"].get("Timestamp"))
                if err is not None and age is not None and age < REJECTION_RETRY_SECONDS:
                    raise err
            force = int(service["Spec"]["TaskTemplate"].get("ForceUpdate") or 0) + 1
            await self._update(service, {"ForceUpdate": force})
        await self._new_task(instance_id, task)

    async def update(self, instance_id: str, desired: Desired) -> None:
        """``service update`` to the new spec: Swarm stops the old task and starts one of the new spec
        (a service stopped by the controller stays at zero replicas)."""
        service = await self._service(instance_id)
        task = newest_task(await self.driver.tasks([instance_id]))
        spec = copy.deepcopy(desired.body)
        spec["Mode"] = service["Spec"]["Mode"]
        spec["TaskTemplate"]["ForceUpdate"] = service["Spec"]["TaskTemplate"].get("ForceUpdate", 0)
        await self._send_update(service, spec)
        if replicas(service):
            await self._new_task(instance_id, task)

    async def _new_task(self, instance_id: str, before: dict[str, Any] | None) -> None:
        """Until Swarm has made the task it now owes (milliseconds), so the instance seen next is that
        one, starting, and not the ended one again (a restart counted twice)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NEW_TASK_SECONDS
        while loop.time() < deadline:
            task = newest_task(await self.driver.tasks([instance_id]))
            if task is not None and (before is None or task["ID"] != before["ID"]):
                return
            await asyncio.sleep(0.05)

    async def _service(self, instance_id: str) -> dict[str, Any]:
        service = await self.driver.service(instance_id)
        if service is None:
            raise AgentError(CONTAINER_ERROR, f"service {instance_id[:12]} is gone")
        return service

    async def stop(self, instance_id: str, grace_seconds: int) -> None:
        """Scale to zero: Swarm stops the task (SIGTERM, SIGKILL after the service's stop grace period,
        which is ``spec.stopGracePeriodSeconds``); returns once it has stopped."""
        service = await self.driver.service(instance_id)
        if service is None:
            return
        if replicas(service) != 0:
            await self._update(service, {"Mode": {"Replicated": {"Replicas": 0}}})
        await self.driver.wait_stopped(instance_id, grace_seconds + self.settings.docker_timeout_seconds)

    async def pause(self, instance_id: str) -> None:
        """Docker pause of the running task's container, on its node's daemon (through this runtime's own
        node clients, never the live views')."""
        self._touch(instance_id)
        self._paused[instance_id] = await self._set_paused(instance_id, True)

    async def unpause(self, instance_id: str) -> None:
        self._touch(instance_id)
        await self._set_paused(instance_id, False)
        self._paused.pop(instance_id, None)

    async def _set_paused(self, instance_id: str, paused: bool) -> str:
        found = running_container(await self.driver.tasks([instance_id]))
        if found is None:
            raise AgentError(CONTAINER_ERROR, f"service {instance_id[:12]} has no running task")
        node_id, container = found
        node = (await self._nodes()).get(node_id) or {"ID": node_id}
        await set_paused(self.facts.clients.client(node), container, paused)
        return container

    async def remove(self, instance_id: str) -> None:
        """Remove the service; one scaled to zero (stopped first) once Swarm has reaped the tasks it
        scaled away: removing a service while its task reaper deletes them crashed the Engine 20.10
        manager twice in the lab (a nil task in ``SetServiceTasksRemove``, moby/swarmkit#3216)."""
        self._touch(instance_id)
        service = await self.driver.service(instance_id)
        if service is not None and replicas(service) == 0:
            await self.driver.wait_reaped(instance_id, REAP_SECONDS)
        await self.driver.remove_service(instance_id)

    async def rename(self, instance_id: str, agent: str) -> None:
        """Swarm services cannot be renamed; the reconciler never asks (a service is found by its labels)."""
        raise AgentError(CONTAINER_ERROR, f"service {instance_id[:12]} cannot be renamed")

    async def connect(self, instance_id: str, network: str, aliases: list[str]) -> None:
        """The service's networks are in its spec (and so in its config hash): nothing to connect."""

    async def recent_output(self, instance_id: str, lines: int) -> list[str]:
        """The running task container's log tail from its node, through this runtime's own node clients;
        through the manager when its node has no endpoint or does not answer."""
        where = self._containers.get(instance_id)
        if where is not None:
            node, container = where
            with contextlib.suppress(AgentError):  # no endpoint for the node, or it did not answer
                return await container_output(self.driver, self.facts.clients.client(node), container, lines)
        return await self._live.recent_output(instance_id, lines)

    async def changes(self) -> AsyncIterator[RuntimeChange]:
        """The manager polled: an agent whose service or tasks (or their nodes) changed; a managed network
        gone. A failed poll ends the stream (the controller re-lists when it starts another)."""
        self.driver.forget_cached()
        seen: dict[str, tuple[Any, ...]] = {}
        networks: set[str] | None = None
        first = True
        self._polled_at = float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            self._kick.clear()
            services = await self.driver.services()
            tasks, nodes, networks_now = await asyncio.gather(  # one round trip's wait for the three
                self.driver.tasks([s["ID"] for s in services]) if services else _none(),
                self._nodes(fresh=True),
                self.managed_networks(),
            )
            self._report_nodes(nodes)
            now: dict[str, tuple[Any, ...]] = {}
            polled: dict[str, list[Instance]] = {}
            for service in services:
                # what the reconciler would see: a task going pending -> assigned -> preparing is no news
                own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
                found = await self._oom_checked(self._of(service, own, nodes), own, nodes)
                polled.setdefault(found.agent, []).append(found)
                seen_now = (found.id, found.state, found.config_hash, found.node, found.error, found.finished_at)
                now[found.agent] = (*now.get(found.agent, ()), seen_now)
            self._polled, self._polled_at = polled, began
            for gone in set(self._containers) - {str(s["ID"]) for s in services}:
                del self._containers[gone]
            self.facts.forget_tasks({str(t["ID"]) for t in tasks})
            await self._probe_nodes(tasks, nodes)
            for agent in set(seen) | set(now):
                if agent and not first and seen.get(agent) != now.get(agent):
                    yield RuntimeChange("instance", agent=agent)
            seen, first = now, False
            current = {n.name for n in networks_now}
            for gone in (networks or set()) - current:
                self.driver.forget_network(gone)
                yield RuntimeChange("network-removed", network=gone)
            networks = current
            busy = any(i.state == "starting" for found in polled.values() for i in found)
            await self._pause(self._poll_interval(busy))

    async def _pause(self, interval: float) -> None:
        """Sleep ``interval``, or until STARTING_POLL_SECONDS after this runtime changed something (since
        the poll began)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + interval
        try:
            await asyncio.wait_for(self._kick.wait(), interval)
        except TimeoutError:
            return
        await asyncio.sleep(max(0.0, min(deadline - loop.time(), STARTING_POLL_SECONDS)))

    def _poll_interval(self, busy: bool) -> float:
        """``PARALLAX_SWARM_POLL_SECONDS``; while a task is being scheduled and started (a new agent, a
        restart, a node lost), at most STARTING_POLL_SECONDS, so that Running is seen soon after it is so."""
        interval = self.settings.swarm_poll_seconds
        return min(interval, STARTING_POLL_SECONDS) if busy else interval

    def _report_nodes(self, nodes: dict[str, dict[str, Any]]) -> None:
        """Log once each node that goes down (its agents are made again elsewhere); such a node is asked
        again whether its daemon gives no-new-privileges once it is back (``_probe_nodes``)."""
        for node in nodes.values():
            host = str((node.get("Description") or {}).get("Hostname", node["ID"]))
            state = (node.get("Status") or {}).get("State")
            key = f"{host}:{state}"
            if state != "ready" and key not in self.reported_nodes:
                log.warning("swarm node %s is %s: its agents are made again on other nodes", host, state)
                self.facts.forget_node(host)  # it may come back with another daemon.json
            self.reported_nodes.add(key)
            if state == "ready":
                self.reported_nodes.discard(f"{host}:down")


def _task_container(
    tasks: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """The newest task, its node and its container's ID (empty before it had one)."""
    task = newest_task(tasks)
    if task is None:
        return None, None, ""
    container = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID") or ""
    return task, nodes.get(str(task.get("NodeID", ""))), str(container)


async def _none() -> list[dict[str, Any]]:
    return []


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def _age(timestamp: Any) -> float | None:
    when = parse_runtime_time(str(timestamp)) if timestamp else None
    if when is None:
        return None
    return (datetime.now(UTC) - when).total_seconds()


def _is_a_runtime(runtime: SwarmRuntime) -> Runtime:
    """mypy checks here that the swarm runtime implements the whole ``Runtime`` interface."""
    return runtime
