"""``reconcile(name)``: bring one agent's container in line with its record, level-triggered.

Like controller-runtime's ``Reconcile``, it receives only a key, reads the record and Docker's view
itself, acts, writes status and returns a ``Result`` (done, or requeue after N seconds). Errors are
written to the agent's status and raised so the work queue retries the key with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.config import Settings
from controller.docker_driver import ContainerInfo, DockerDriver, parse_docker_time
from controller.errors import CONTAINER_ERROR, IMAGE_NOT_FOUND, NETWORK_ERROR, RESOURCE_LIMIT, AgentError
from controller.model import Agent, container_name, parse_iso
from controller.mounts import parse_volume
from controller.policy import mount_refusal, redirectable, resolve_mounts
from controller.quantity import parse_memory
from controller.redact import scrub
from controller.render import desired_container, workspace_labels, workspace_volume
from controller.restarts import decide_exit, should_restart
from controller.status import clear_error, set_condition, set_error, with_phase
from controller.store import NotFound, Store, StoreError

log = logging.getLogger("parallax.reconciler")

ORPHAN_GRACE_SECONDS = 10
NORMAL, WARNING = "Normal", "Warning"
# Agent images print this line when they have no API key (images/README.md); the runtime reports it.
CREDENTIALS_MARKER = "parallax: needs credentials:"
CREDENTIALS_TAIL_LINES = 20
CREDENTIALS_WINDOW_SECONDS = 12.0
CREDENTIALS_RECHECK_SECONDS = 3.0


def _recently_started(info: ContainerInfo, now: datetime, seconds: float) -> bool:
    started = parse_docker_time(info.started_at)
    return started is not None and (now - started).total_seconds() < seconds


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Reconciler:
    def __init__(
        self,
        store: Store,
        driver: DockerDriver,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_collected: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.settings = settings
        self.now = now
        self.on_collected = on_collected

    async def reconcile(self, name: str) -> Result:
        try:
            agent: Agent | None = await self.store.get(name)
        except NotFound:
            agent = None
        try:
            containers = await self.driver.list_containers(name)
        except AgentError as err:
            if agent is not None:
                await self._fail(agent, err)
            raise
        if agent is None:
            for orphan in containers:
                log.info("removing container %s: agent %s has no record", orphan.name, name)
                await self._stop_and_remove(orphan, ORPHAN_GRACE_SECONDS)
                self.on_collected("container")
            return Result()
        mine = [c for c in containers if c.uid == agent.metadata.uid]
        for stranger in (c for c in containers if c.uid != agent.metadata.uid):
            log.warning("removing container %s: its uid label does not match agent %s", stranger.name, name)
            await self._event(
                agent,
                WARNING,
                "ForeignContainerRemoved",
                f"removed container {stranger.name} whose labels claimed this agent with another uid",
            )
            await self._stop_and_remove(stranger, 0)
            self.on_collected("container")
        if agent.metadata.deletion_timestamp is not None:
            for container in mine:
                await self._stop_and_remove(container, agent.spec.stop_grace_period_seconds)
            if not agent.spec.keep_workspace:
                await self.driver.remove_volume(
                    workspace_volume(name, self.settings.instance), workspace_labels(agent, self.settings)
                )
            await self.store.purge(name, agent.metadata.uid)
            await self._event(agent, NORMAL, "Deleted", "container stopped and removed; record purged")
            log.info("agent %s deleted", name)
            return Result()
        mine.sort(key=lambda c: (c.name != container_name(name), not c.running))
        for extra in mine[1:]:
            log.warning("removing duplicate container %s of agent %s", extra.name, name)
            await self._stop_and_remove(extra, 0)
            self.on_collected("container")
        try:
            return await self._converge(agent, mine[0] if mine else None)
        except AgentError as err:
            await self._fail(agent, err)
            raise

    async def _fail(self, agent: Agent, err: AgentError) -> None:
        err.scrub(agent.spec.env)  # Docker's text may quote an env entry: status, events, log and raise get it clean
        if err.code == NETWORK_ERROR:
            self.driver.forget_network(agent.spec.network)
        elif err.code == IMAGE_NOT_FOUND:
            self.driver.forget_images()
        previous = agent.status.get("error") or {}
        level = logging.DEBUG if previous.get("code") == err.code else logging.WARNING
        log.log(level, "agent %s: %s", agent.name, err)
        await self._event(agent, WARNING, err.code, err.message)
        status = set_error(agent.status, err.code, err.message, _iso(self.now()))
        status["observedGeneration"] = agent.metadata.generation
        await self._write(agent, status)

    async def _event(self, agent: Agent, type_: str, reason: str, message: str) -> None:
        """Record an event; a store that cannot take it must not stop the agent being looked after."""
        message = scrub(message, agent.spec.env)
        try:
            await self.store.record_event(agent, type_, reason, message)
        except StoreError as exc:
            log.debug("event %s for %s not recorded: %s", reason, agent.name, exc)

    async def _write(self, agent: Agent, status: dict[str, Any]) -> None:
        updated = await self.store.update_status(agent.name, agent.metadata.uid, status)
        if updated is not None:
            agent.status = updated.status

    async def _stop_and_remove(self, container: ContainerInfo, grace: int) -> None:
        if container.running and grace > 0:
            await self.driver.stop(container.id, grace)
        await self.driver.remove(container.id)

    async def _converge(self, agent: Agent, current: ContainerInfo | None) -> Result:
        spec = agent.spec
        now = self.now()
        stamp = _iso(now)
        status = dict(agent.status)
        status["observedGeneration"] = agent.metadata.generation
        if spec.suspend:
            if current is not None and current.running:
                await self.driver.stop(current.id, spec.stop_grace_period_seconds)
            status = clear_error(status)
            status["containerId"] = current.id if current else None
            status = with_phase(
                status, "Suspended", ready=False, reason="Suspended", message="spec.suspend is true", now=stamp
            )
            await self._write(agent, status)
            return Result()

        config, digest = desired_container(agent, self.settings)
        await self.driver.ensure_network(spec.network)  # free once the driver has seen the network
        if current is not None and current.config_hash != digest:
            log.info("agent %s: spec changed, recreating container %s", agent.name, current.id[:12])
            await self._event(
                agent,
                NORMAL,
                "Recreating",
                f"spec changed (generation {agent.metadata.generation}): recreating the container",
            )
            await self._stop_and_remove(current, spec.stop_grace_period_seconds)
            current = None
            status["restartCount"] = 0
            status.pop("backoff", None)
            status.pop("lastState", None)

        if current is None:
            await self._guard_mounts(agent, "created")
            image = config["Image"]
            if not await self.driver.image_exists(image):
                raise AgentError(IMAGE_NOT_FOUND, f"image {image} is not present locally (nothing is pulled)")
            await self.driver.ensure_volume(
                workspace_volume(agent.name, self.settings.instance), workspace_labels(agent, self.settings)
            )
            container_id = await self.driver.create_container(container_name(agent.name), config)
            await self._event(agent, NORMAL, "Created", f"created container {container_id[:12]} from image {image}")
            status["containerId"] = container_id
            await self._write(agent, status)
            await self._start(agent, container_id)
            log.info("agent %s: started container %s", agent.name, container_id[:12])
            await self._event(agent, NORMAL, "Started", f"started container {container_id[:12]}")
            info = await self.driver.inspect(container_id)
            return await self._observe(agent, status, info, stamp)

        if current.name != container_name(agent.name):
            log.warning("agent %s: container was renamed to %s; renaming it back", agent.name, current.name)
            await self.driver.rename(current.id, container_name(agent.name))
            await self._event(agent, WARNING, "Renamed", f"container had been renamed to {current.name}; renamed back")
        if current.running and spec.network not in current.networks:
            log.warning("agent %s: container is not on network %s; reconnecting", agent.name, spec.network)
            await self.driver.connect_network(current.id, spec.network, [agent.name])
            await self._event(agent, WARNING, "Reconnected", f"container was off network {spec.network}; reconnected")
        if current.status == "created":
            await self._start(agent, current.id)
            info = await self.driver.inspect(current.id)
            return await self._observe(agent, status, info, stamp)
        if current.running:
            return await self._observe(agent, status, current, stamp)
        return await self._exited(agent, status, current, now)

    async def _observe(self, agent: Agent, status: dict[str, Any], info: ContainerInfo | None, stamp: str) -> Result:
        """Status for a container that should be running now."""
        if info is None or not info.running:
            return Result(requeue_after=0.5)
        status["containerId"] = info.id
        status["startedAt"] = info.started_at
        if (
            status.get("error", {}).get("code") != RESOURCE_LIMIT
            or (status.get("lastState") or {}).get("reason") != "OOMKilled"
        ):
            status = clear_error(status)
        status = with_phase(status, "Running", ready=True, reason="Running", message="container is running", now=stamp)
        result = Result()
        known = status.get("credentials") or {}
        if known.get("containerId") == info.id:
            need: str | None = str(known.get("message", "needs credentials"))
        else:
            status.pop("credentials", None)
            status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "CredentialsReady"]
            need = None
            if _recently_started(info, self.now(), CREDENTIALS_WINDOW_SECONDS):
                need = await self._credentials_needed(info)
                if need is None:
                    result = Result(requeue_after=CREDENTIALS_RECHECK_SECONDS)
        if need is not None:
            status = with_phase(status, "Running", ready=False, reason="NeedsCredentials", message=need, now=stamp)
            set_condition(status, "CredentialsReady", False, "NeedsCredentials", need, stamp)
            if known.get("containerId") != info.id:
                await self._event(agent, WARNING, "NeedsCredentials", need)
            status["credentials"] = {"containerId": info.id, "message": need}
        await self._write(agent, status)
        return result

    async def _start(self, agent: Agent, container_id: str) -> None:
        """Every start of a container goes through here: Docker resolves bind-mount host paths again at
        each start, so the mount policy is applied again at each start, not only at creation."""
        await self._guard_mounts(agent, "started")
        await self.driver.start(container_id)

    async def _guard_mounts(self, agent: Agent, doing: str) -> None:
        """The mount policy on the host paths as they are now: each must still lie in an allowed root and
        expose nothing of the host (a path may have become a symlink since admission), and none may be
        redirectable through a read-write mount of this or any other agent (``policy.redirectable``).
        Other agents' records count while they exist, deleting ones included, so of two agents whose
        mounts conflict, whichever starts second is refused, however the two were admitted."""
        spec = agent.spec
        if not spec.volumes:
            others: list[Agent] = []
        else:
            others = [a for a in await self.store.list() if a.name != agent.name and a.spec.volumes]
        for i, volume in enumerate(spec.volumes):
            why = mount_refusal(parse_volume(volume), self.settings)
            if why is not None:
                raise AgentError(
                    CONTAINER_ERROR,
                    f"volumes[{i}]: {why}; the container is not {doing} (the path changed since admission?)",
                )
        theirs = [m for other in others for m in resolve_mounts(other.spec.volumes, f"agent {other.name!r} ")]
        for mount, why in redirectable(resolve_mounts(spec.volumes), theirs):
            raise AgentError(CONTAINER_ERROR, f"{mount.owner}: {why}; the container is not {doing}")

    async def _credentials_needed(self, info: ContainerInfo) -> str | None:
        """The agent image's own word that it has no credentials (its ``parallax: needs credentials:`` line)."""
        for line in reversed(await self.driver.recent_output(info.id, CREDENTIALS_TAIL_LINES)):
            if line.startswith(CREDENTIALS_MARKER):
                return line[len("parallax: ") :].strip()
        return None

    async def _exited(self, agent: Agent, status: dict[str, Any], current: ContainerInfo, now: datetime) -> Result:
        spec = agent.spec
        stamp = _iso(now)
        status["containerId"] = current.id
        finished = parse_docker_time(current.finished_at) or now
        started = parse_docker_time(current.started_at) or finished
        last = status.get("lastState") or {}
        if last.get("finishedAt") != current.finished_at:
            previous = (status.get("backoff") or {}).get("delaySeconds")
            decision = decide_exit(
                spec.restart_policy, current.exit_code, previous, (finished - started).total_seconds()
            )
            reason = "OOMKilled" if current.oom_killed else ("Completed" if current.exit_code == 0 else "Error")
            status["lastState"] = {
                "exitCode": current.exit_code,
                "reason": reason,
                "startedAt": current.started_at,
                "finishedAt": current.finished_at,
            }
            if decision.restart:
                status["backoff"] = {
                    "delaySeconds": decision.delay,
                    "restartAt": _iso(finished + timedelta(seconds=decision.delay)),
                }
            else:
                status.pop("backoff", None)
            log.info("agent %s: container exited with code %s (%s)", agent.name, current.exit_code, reason.lower())
            if current.oom_killed:
                await self._event(
                    agent, WARNING, "OOMKilled", f"container was OOM-killed at its memory limit {spec.resources.memory}"
                )
            elif current.exit_code == 0:
                await self._event(agent, NORMAL, "Completed", "container exited with code 0")
            else:
                killed = " (killed)" if current.exit_code == 137 else ""
                await self._event(agent, WARNING, "Exited", f"container exited with code {current.exit_code}{killed}")
            if current.oom_killed:
                limit = parse_memory(spec.resources.memory)
                status = set_error(
                    status,
                    RESOURCE_LIMIT,
                    f"the container was OOM-killed at its memory limit of {spec.resources.memory} ({limit} bytes)",
                    stamp,
                )

        if not should_restart(spec.restart_policy, current.exit_code):
            phase = "Succeeded" if current.exit_code == 0 else "Failed"
            status = with_phase(
                status,
                phase,
                ready=False,
                reason=status["lastState"]["reason"],
                message=f"container exited with code {current.exit_code}; restartPolicy is {spec.restart_policy}",
                now=stamp,
            )
            await self._write(agent, status)
            return Result()

        restart_at = parse_iso(status["backoff"]["restartAt"])
        if now < restart_at:
            wait = (restart_at - now).total_seconds()
            if agent.phase != "CrashLoopBackOff" or last.get("finishedAt") != current.finished_at:
                await self._event(
                    agent,
                    WARNING,
                    "BackOff",
                    f"back-off {status['backoff']['delaySeconds']:g}s restarting the exited container",
                )
            status = with_phase(
                status,
                "CrashLoopBackOff",
                ready=False,
                reason="CrashLoopBackOff",
                message=f"back-off {status['backoff']['delaySeconds']:g}s restarting the exited container",
                now=stamp,
            )
            await self._write(agent, status)
            return Result(requeue_after=wait)
        await self._start(agent, current.id)
        status["restartCount"] = int(status.get("restartCount", 0)) + 1
        log.info("agent %s: restarted container (restart %d)", agent.name, status["restartCount"])
        await self._event(
            agent,
            NORMAL,
            "Restarted",
            f"restarted container (restart {status['restartCount']}, policy {spec.restart_policy})",
        )
        info = await self.driver.inspect(current.id)
        if info is not None and not info.running:
            # Exited again already: let the next pass record that exit.
            await self._write(agent, status)
            return Result(requeue_after=0)
        return await self._observe(agent, status, info, stamp)
