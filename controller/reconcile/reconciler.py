"""``reconcile(name)``: bring one agent's instances in line with its record, level-triggered.

Like controller-runtime's ``Reconcile``, it receives only a key and reads the record and the runtime's
view itself. What to do is decided by the pure ``controller.reconcile.decide.decide``; this module executes its
operations through the runtime interface, feeds back what it learnt, and decides again, until nothing is
left to do. Then it writes status and returns a ``Result`` (done, or requeue after N seconds). Errors are
written to the agent's status and raised, so the work queue retries the key with backoff.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from controller.admission.policy import mount_refusal, redirectable, resolve_mounts
from controller.config import Settings
from controller.model.agent import Agent
from controller.model.errors import CONTAINER_ERROR, IMAGE_NOT_FOUND, SECRET_MISSING, SOCKET_ERROR, AgentError
from controller.model.mounts import parse_volume
from controller.model.redact import scrub
from controller.model.secret import CONDITION as SECRET_CONDITION
from controller.model.secret import Missing, resolve_env
from controller.model.timestamps import format_time
from controller.reconcile.decide import CREDENTIALS_TAIL_LINES, AgentEventNote, Facts, Operation, after, decide, plan
from controller.reconcile.lifecycle import idle_at
from controller.reconcile.status import set_condition, set_error
from controller.runtime.interface import Desired, Instance, Runtime
from controller.store.interface import NotFound, Store, StoreError

log = logging.getLogger("parallax.reconciler")

MAX_ROUNDS = 12
"""Decide → execute rounds in one reconcile; a normal create takes five (network, create, start, output)."""


def _one_more(status: dict[str, Any], instance_id: str, err: AgentError, now: str) -> dict[str, Any]:
    """``status.startFailures`` after one more refused start of ``instance_id``: how many, since when."""
    before = status.get("startFailures") or {}
    if before.get("containerId") != instance_id:
        before = {"count": 0, "since": now}
    return {
        "containerId": instance_id,
        "count": int(before["count"]) + 1,
        "since": before["since"],
        "message": f"{err.code}: {err.message}",
    }


class _NotIdle(Exception):
    """The agent is no longer idle (or no longer this one) when its suspension is written."""


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_collected: Callable[[str], None] = lambda kind: None,
        fence: Callable[[], None] = lambda: None,
    ) -> None:
        self.fence = fence
        """Raises (``controller.store.lease.NotLeader``) unless this controller leads now: called before
        every runtime write, status write and event, so a deposed leader stops acting on time."""
        self.store = store
        self.runtime = runtime
        self.settings = settings
        self.now = now
        self.on_collected = on_collected
        self.idle_grace = settings.activity_write_seconds
        """An activity may be written this late (the API's throttle): idle is decided that much later."""

    async def reconcile(self, name: str) -> Result:
        try:
            agent: Agent | None = await self.store.get(name)
        except NotFound:
            agent = None
        if agent is not None:
            agent, missing = await self._resolve(agent)
            if missing and agent.metadata.deletion_timestamp is None and not agent.spec.suspend:
                await self._secret_missing(agent, missing)
                return Result()
        try:
            instances = await self.runtime.instances(name)
        except AgentError as err:
            if agent is not None:
                await self._fail(agent, err)
            raise
        desired = self.runtime.render(agent) if agent is not None else None
        facts = Facts()
        try:
            for _ in range(MAX_ROUNDS):
                decision = decide(name, agent, instances, desired, self.now(), facts, idle_grace=self.idle_grace)
                for note in decision.events:
                    await self._event(agent, note)
                for operation in decision.operations:
                    instances = await self._execute(name, agent, desired, operation, instances, facts)
                # A decision's status holds once its operations are done: if one fails, the error is
                # written on the status as it was (a restart that did not happen is not counted).
                if agent is not None and decision.status is not None:
                    agent.status = decision.status
                if decision.done:
                    return Result()
                if not decision.operations:
                    if agent is not None and decision.status is not None:
                        await self._write(agent, decision.status)
                    return Result(decision.requeue_after)
        except AgentError as err:
            if agent is not None:
                await self._fail(agent, err)
            raise
        if agent is not None:
            await self._write(agent, agent.status)
        return Result(requeue_after=0)

    async def plan(self, name: str, agent: Agent | None) -> list[Operation]:
        """The operations reconciling ``agent`` (a record as it would be) would make now, from ``decide``
        itself and the runtime's instances: what ``apply --dry-run`` shows. The runtime is only read."""
        instances = await self.runtime.instances(name)
        if agent is not None:
            agent, missing = await self._resolve(agent)
            if missing and agent.metadata.deletion_timestamp is None and not agent.spec.suspend:
                return []  # SecretMissing: the container is left as it is
        desired = self.runtime.render(agent) if agent is not None else None
        return plan(name, agent, instances, desired, self.now(), idle_grace=self.idle_grace)

    # -- Secrets -----------------------------------------------------------------------------------

    async def _resolve(self, agent: Agent) -> tuple[Agent, list[Missing]]:
        """The agent with its ``secretKeyRef`` env resolved (what is rendered, hashed and scrubbed from
        Docker's text), and the references that do not resolve. A ``SecretMissing`` left from before is
        cleared once every reference resolves."""
        if not agent.spec.env_refs and not _has_secret_missing(agent.status):
            return agent, []
        secrets = {}
        for ref in agent.spec.env_refs.values():
            if ref.name not in secrets:
                with contextlib.suppress(NotFound):
                    secrets[ref.name] = await self.store.get_secret(ref.name)
        resolved, missing = resolve_env(agent, secrets)
        if not missing and _has_secret_missing(resolved.status):
            status = dict(resolved.status)
            status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") != SECRET_CONDITION]
            if (status.get("error") or {}).get("code") == SECRET_MISSING:
                del status["error"]
            await self._write(resolved, status)
        return resolved, missing

    async def _secret_missing(self, agent: Agent, missing: list[Missing]) -> None:
        """A reference that does not resolve: condition ``SecretMissing`` (naming the secret and key,
        never a value), an event, and no change to the container: a running one stays as it is."""
        message = "; ".join(m.message() for m in missing)
        now = format_time(self.now())
        status = set_error(agent.status, SECRET_MISSING, message, now)
        set_condition(status, SECRET_CONDITION, True, SECRET_CONDITION, message, now)
        status["observedGeneration"] = agent.metadata.generation
        await self._event(agent, AgentEventNote("Warning", SECRET_CONDITION, message))
        await self._write(agent, status)

    # -- executing one operation -------------------------------------------------------------------

    async def _execute(
        self,
        name: str,
        agent: Agent | None,
        desired: Desired | None,
        op: Operation,
        instances: list[Instance],
        facts: Facts,
    ) -> list[Instance]:
        """Perform ``op``; the instances as they are after it."""
        runtime = self.runtime
        if op.kind != "read-output":
            self.fence()
        if op.kind == "ensure-network":
            await runtime.ensure_network(op.target)
            facts.network_ready = True
        elif op.kind == "read-output":
            facts.output[op.target] = await runtime.recent_output(op.target, CREDENTIALS_TAIL_LINES)
        elif op.kind == "create":
            assert agent is not None and desired is not None
            created = await self._create(agent, desired)
            instances = [*instances, created]
        elif op.kind == "start":
            assert agent is not None
            await self._guard_mounts(agent, "started")
            try:
                await runtime.start(op.target)
            except AgentError as err:
                if err.code != SOCKET_ERROR:  # the runtime answered, and refused: count it (decide.START_ATTEMPTS)
                    err.scrub(agent.spec.env)
                    failures = _one_more(agent.status, op.target, err, format_time(self.now()))
                    agent.status = {**agent.status, "startFailures": failures}
                raise
            log.info("agent %s: started container %s", name, op.target[:12])
            found = await runtime.instance(op.target)
            instances = [i for i in instances if i.id != op.target] + ([found] if found is not None else [])
        elif op.kind == "update":
            assert desired is not None
            log.info("agent %s: updating instance %s: %s", name, op.target[:12], op.cause)
            await runtime.update(op.target, desired)
            found = await runtime.instance(op.target)
            instances = [i for i in instances if i.id != op.target] + ([found] if found is not None else [])
        elif op.kind == "stop":
            log.info("agent %s: stopping container %s: %s", name, op.target[:12], op.cause)
            await runtime.stop(op.target, op.grace_seconds)
            instances = after(op, instances, agent, desired)
        elif op.kind in ("pause", "unpause"):
            log.info("agent %s: %s container %s: %s", name, f"{op.kind[:-1]}ing", op.target[:12], op.cause)
            await (runtime.pause(op.target) if op.kind == "pause" else runtime.unpause(op.target))
            found = await runtime.instance(op.target)
            instances = [i for i in instances if i.id != op.target] + ([found] if found is not None else [])
        elif op.kind == "suspend":
            assert agent is not None
            if not await self._suspend_idle(agent):
                return instances  # activity came meanwhile: no longer idle, nothing done (no event)
        elif op.kind == "expire":
            assert agent is not None
            log.info("agent %s: deleting it: %s", name, op.cause)
            marked = await self.store.mark_deleted(name, expected_rv=str(agent.metadata.resource_version))
            agent.metadata = marked.metadata
        elif op.kind == "remove":
            log.info("agent %s: removing container %s: %s", name, op.target[:12], op.cause)
            await runtime.remove(op.target)
            instances = after(op, instances, agent, desired)
            if op.collected:
                self.on_collected("container")
        elif op.kind == "rename":
            log.warning("agent %s: %s; renaming it back", name, op.cause)
            await runtime.rename(op.target, name)
            instances = after(op, instances, agent, desired)
        elif op.kind == "connect":
            assert agent is not None
            log.warning("agent %s: %s; reconnecting", name, op.cause)
            network = desired.network_of(agent) if desired is not None else agent.spec.network
            await runtime.connect(op.target, network, [name])
            instances = after(op, instances, agent, desired)
        elif op.kind == "remove-workspace":
            assert agent is not None
            await runtime.remove_workspace(agent)
        elif op.kind == "purge":
            assert agent is not None
            await self.store.purge(name, agent.metadata.uid)
            log.info("agent %s deleted", name)
        if op.event is not None:
            await self._event(agent, op.event)
        return instances

    async def _suspend_idle(self, agent: Agent) -> bool:
        """Set ``spec.suspend`` on the latest record if it is still idle (activity may have been noted
        since this reconcile read it); False, with that activity taken on ``agent``, when it is not."""
        now = self.now()
        latest_status: dict[str, Any] = {}

        def build(latest: Agent) -> Agent:
            latest_status.update(latest.status)
            due = idle_at(latest, latest.status, self.idle_grace)
            if latest.metadata.uid != agent.metadata.uid or latest.spec.suspend or due is None or due > now:
                raise _NotIdle
            return Agent(latest.metadata, replace(latest.spec, suspend=True), latest.status)

        try:
            updated = await self.store.update(agent.name, build)
        except _NotIdle:
            # Decide again on the times the store holds, which say it is not idle (no loop of retries).
            status = dict(agent.status)
            for key in ("lastActivityTime", "activeSince"):
                status.pop(key, None)
                if key in latest_status:
                    status[key] = latest_status[key]
            agent.status = status
            return False
        log.info("agent %s: idle for spec.lifecycle.idleTimeoutSeconds: suspended", agent.name)
        agent.metadata, agent.spec = updated.metadata, updated.spec
        return True

    async def _create(self, agent: Agent, desired: Desired) -> Instance:
        await self._guard_mounts(agent, "created")
        if not await self.runtime.image_present(desired.image):
            raise AgentError(IMAGE_NOT_FOUND, f"image {desired.image} is not present locally (nothing is pulled)")
        self.fence()
        await self.runtime.ensure_workspace(agent)
        self.fence()
        created = await self.runtime.create(agent, desired)
        log.info("agent %s: created container %s", agent.name, created.id[:12])
        await self._event(
            agent,
            AgentEventNote("Normal", "Created", f"created container {created.id[:12]} from image {desired.image}"),
        )
        return created

    async def _guard_mounts(self, agent: Agent, doing: str) -> None:
        """The mount policy on the host paths as they are now, before every creation and every start:
        Docker resolves bind-mount host paths again at each start. Each must still lie in an allowed root
        and expose nothing of the host (a path may have become a symlink since admission), and none may be
        redirectable through a read-write mount of this or any other agent (``policy.redirectable``).
        Other agents' records count while they exist, deleting ones included, so of two agents whose
        mounts conflict, whichever starts second is refused, however the two were admitted."""
        spec = agent.spec
        if not spec.volumes:
            return
        for i, volume in enumerate(spec.volumes):
            why = mount_refusal(parse_volume(volume), self.settings)
            if why is not None:
                raise AgentError(
                    CONTAINER_ERROR,
                    f"volumes[{i}]: {why}; the container is not {doing} (the path changed since admission?)",
                )
        others = [a for a in await self.store.list() if a.name != agent.name and a.spec.volumes]
        theirs = [m for other in others for m in resolve_mounts(other.spec.volumes, f"agent {other.name!r} ")]
        for mount, why in redirectable(resolve_mounts(spec.volumes), theirs):
            raise AgentError(CONTAINER_ERROR, f"{mount.owner}: {why}; the container is not {doing}")

    # -- status and events -------------------------------------------------------------------------

    async def _fail(self, agent: Agent, err: AgentError) -> None:
        err.scrub(
            agent.spec.env
        )  # the runtime's text may quote an env entry: status, events, log and raise get it clean
        previous = agent.status.get("error") or {}
        level = logging.DEBUG if previous.get("code") == err.code else logging.WARNING
        log.log(level, "agent %s: %s", agent.name, err)
        await self._event(agent, AgentEventNote("Warning", err.code, err.message))
        status = set_error(agent.status, err.code, err.message, format_time(self.now()))
        status["observedGeneration"] = agent.metadata.generation
        await self._write(agent, status)

    async def _event(self, agent: Agent | None, note: AgentEventNote) -> None:
        """Record an event; a store that cannot take it must not stop the agent being looked after."""
        if agent is None:
            return
        self.fence()
        message = scrub(note.message, agent.spec.env)
        try:
            await self.store.record_event(agent, note.type, note.reason, message)
        except StoreError as exc:
            log.debug("event %s for %s not recorded: %s", note.reason, agent.name, exc)

    async def _write(self, agent: Agent, status: dict[str, Any]) -> None:
        self.fence()
        updated = await self.store.update_status(agent.name, agent.metadata.uid, status)
        if updated is not None:
            agent.status = updated.status


def _has_secret_missing(status: dict[str, Any]) -> bool:
    return any(c.get("type") == SECRET_CONDITION for c in status.get("conditions", []))
