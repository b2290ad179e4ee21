"""``decide``: what one agent needs now, as a pure function of its record, what the runtime has, and the time.

Docker Compose's convergence is the model: observed state in, a plan of single operations out, each with
its cause, and an executor (``controller.reconcile.reconciler``) that performs them through the runtime. Nothing
here does I/O. Facts that cost a call to learn (the network is usable, an instance's last output lines)
are asked for with an operation; the executor learns them and calls ``decide`` again, so a reconcile is a
few rounds of decide → execute until nothing is left to do. ``POST /apply?dryRun=true`` shows the
operations of every round (``plan``, assuming each succeeds), from this same function.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from controller.model.agent import Agent
from controller.model.errors import RESOURCE_LIMIT
from controller.model.quantity import parse_memory
from controller.model.timestamps import format_time as iso
from controller.model.timestamps import parse_runtime_time, parse_time
from controller.reconcile.lifecycle import (
    DEADLINE_EXCEEDED,
    deadline_at,
    ended,
    ended_mark,
    expires_at,
    idle_at,
    next_timer,
)
from controller.reconcile.restarts import decide_exit, should_restart
from controller.reconcile.status import clear_error, set_condition, set_error, with_phase
from controller.runtime.interface import Desired, Instance

ORPHAN_GRACE_SECONDS = 10
NORMAL, WARNING = "Normal", "Warning"
# Agent images print this line when they have no API key (images/README.md); the runtime reports it.
CREDENTIALS_MARKER = "parallax: needs credentials:"
CREDENTIALS_TAIL_LINES = 20
CREDENTIALS_WINDOW_SECONDS = 12.0
CREDENTIALS_RECHECK_SECONDS = 3.0
MAX_PLAN_ROUNDS = 12
START_ATTEMPTS = 2
START_REFUSAL_SECONDS = 10.0
"""An instance is replaced by a new one once the runtime has refused to start it ``START_ATTEMPTS``
times over at least ``START_REFUSAL_SECONDS``: the runtime kept an instance it can no longer start (a
network deleted and made again, a task its engine left behind after a crash). Refusals within a few
seconds may be passing (a daemon going down answers oddly while it does); the same refusal ten seconds
later is not, and replacing meanwhile would act on a daemon in the middle of its shutdown."""

OperationKind = Literal[
    "ensure-network",
    "create",
    "start",
    "update",
    "stop",
    "pause",
    "unpause",
    "remove",
    "rename",
    "connect",
    "read-output",
    "remove-workspace",
    "suspend",
    "expire",
    "purge",
]


@dataclass(frozen=True)
class AgentEventNote:
    """An agent event (Kubernetes-style) to record: ``type`` Normal or Warning, a reason, a message."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Operation:
    """One runtime call (or store call, for ``purge``), with why it is made. ``event`` is recorded once it
    has succeeded; ``collected`` counts it as garbage collection."""

    kind: OperationKind
    target: str
    cause: str
    grace_seconds: int = 0
    event: AgentEventNote | None = None
    collected: bool = False

    def __str__(self) -> str:
        return f"{self.kind} {self.target}: {self.cause}"


@dataclass
class Facts:
    """What the executor has learnt during this reconcile, beyond the instances: fed back to ``decide``."""

    network_ready: bool = False
    output: dict[str, list[str]] = field(default_factory=dict)
    """An instance's last output lines, by instance id, once read."""


@dataclass(frozen=True)
class Decision:
    operations: tuple[Operation, ...] = ()
    status: dict[str, Any] | None = None
    """The agent's new status (None: no record to write to)."""
    events: tuple[AgentEventNote, ...] = ()
    """Events about what was observed (an exit, a back-off), recorded when the status is written."""
    requeue_after: float | None = None
    done: bool = False
    """The record is gone (purged, or never was): nothing more to do."""


def _stopping(instance: Instance, grace: int, cause: str, event: AgentEventNote | None = None) -> list[Operation]:
    """A graceful stop; a paused instance is thawed first, so its processes get the SIGTERM."""
    ops = []
    if instance.state == "paused":
        ops.append(Operation("unpause", instance.id, f"{cause} (thawed first, to be stopped gracefully)"))
    ops.append(Operation("stop", instance.id, cause, grace_seconds=grace, event=event))
    return ops


def _removal(instance: Instance, grace: int, cause: str, **extra: Any) -> list[Operation]:
    ops = []
    if instance.running and grace > 0:
        ops += _stopping(instance, grace, cause)
    ops.append(Operation("remove", instance.id, cause, **extra))
    return ops


def decide(
    name: str,
    agent: Agent | None,
    instances: Sequence[Instance],
    desired: Desired | None,
    now: datetime,
    facts: Facts | None = None,
    *,
    idle_grace: float = 0.0,
) -> Decision:
    """What agent ``name`` needs now. ``desired`` is the runtime's rendering of ``agent`` (None without a
    record); ``instances`` are all the runtime's instances claiming to be this agent's. ``idle_grace``:
    how late an activity may be written (``controller.reconcile.lifecycle.idle_at``)."""
    facts = facts or Facts()
    if agent is None:
        orphans = [
            op
            for orphan in instances
            for op in _removal(orphan, ORPHAN_GRACE_SECONDS, f"agent {name} has no record", collected=True)
        ]
        return Decision(tuple(orphans), done=True)

    ops: list[Operation] = []
    mine = [i for i in instances if i.uid == agent.metadata.uid]
    for stranger in (i for i in instances if i.uid != agent.metadata.uid):
        event = AgentEventNote(
            WARNING,
            "ForeignContainerRemoved",
            f"removed container {stranger.name} whose labels claimed this agent with another uid",
        )
        ops += _removal(stranger, 0, "its uid label does not match the agent's", event=event, collected=True)
    if agent.metadata.deletion_timestamp is not None:
        for instance in mine:
            ops += _removal(instance, agent.spec.stop_grace_period_seconds, "the agent is being deleted")
        if not agent.spec.keep_workspace:
            ops.append(Operation("remove-workspace", name, "the agent is being deleted"))
        ops.append(
            Operation(
                "purge",
                name,
                "its instances are gone",
                event=AgentEventNote(NORMAL, "Deleted", "container stopped and removed; record purged"),
            )
        )
        return Decision(tuple(ops), done=True)
    mine.sort(key=lambda i: (i.misnamed, not i.running))
    for extra in mine[1:]:
        ops += _removal(extra, 0, f"a duplicate instance of agent {name}", collected=True)
    if ops:
        return Decision(tuple(ops), status=agent.status)
    assert desired is not None
    return _converge(agent, mine[0] if mine else None, desired, now, facts, idle_grace)


def _converge(
    agent: Agent, current: Instance | None, desired: Desired, now: datetime, facts: Facts, idle_grace: float
) -> Decision:
    """``_converge_now``, unless a lifecycle deadline has passed; requeued at the next one when nothing is
    left to do now (the deadlines are times on the status, so a restarted controller keeps them)."""
    fresh = _new_run(agent)
    if fresh is not agent:
        agent = fresh
        if (
            current is not None
            and not current.running
            and not current.created
            and not agent.spec.suspend
            and current.config_hash == desired.config_hash
        ):
            event = AgentEventNote(NORMAL, "Started", "a new run: the last was ended by its deadline")
            cause = "its run was ended by its deadline, and the spec changed or a restart was asked since"
            return Decision((Operation("start", current.id, cause, event=event),), status=agent.status)
    decision = _lifecycle(agent, current, now, idle_grace) or _converge_now(agent, current, desired, now, facts)
    if decision.operations or decision.status is None:
        return decision
    timer = next_timer(agent, decision.status, now, idle_grace)
    if timer is None:
        return decision
    requeue = timer if decision.requeue_after is None else min(timer, decision.requeue_after)
    return dataclasses.replace(decision, requeue_after=requeue)


def _new_run(agent: Agent) -> Agent:
    """``agent`` without the mark of a run its deadline ended, once that no longer holds (the spec
    changed, or a restart was asked): a new run, with a deadline of its own. The same object otherwise."""
    if "ended" not in agent.status or ended(agent, agent.status) is not None:
        return agent
    status = {k: v for k, v in agent.status.items() if k not in ("ended", "reason", "finishedAt", "activeSince")}
    return Agent(agent.metadata, agent.spec, status)


def _lifecycle(agent: Agent, current: Instance | None, now: datetime, idle_grace: float) -> Decision | None:
    """What ``spec.lifecycle`` calls for now: a run past its deadline stopped (and kept Failed), an idle
    agent suspended or deleted, a finished agent deleted after its TTL; None when nothing is due."""
    spec, status, stamp = agent.spec, agent.status, iso(now)
    lifecycle = spec.lifecycle
    running = current is not None and current.running
    mark = ended(agent, status)
    if mark is not None:
        if current is not None and running:
            return Decision(tuple(_stopping(current, spec.stop_grace_period_seconds, "its run ended")), status=status)
        new = copy.deepcopy(status)
        new["observedGeneration"] = agent.metadata.generation
        new["containerId"] = current.id if current else None
        new["reason"] = DEADLINE_EXCEEDED
        new.setdefault("finishedAt", mark["at"])
        new.pop("activeSince", None)
        new.pop("backoff", None)
        message = f"ran longer than spec.lifecycle.activeDeadlineSeconds ({lifecycle.active_deadline_seconds}s)"
        new = with_phase(new, "Failed", ready=False, reason=DEADLINE_EXCEEDED, message=message, now=stamp)
        expiry = expires_at(agent, new)
        if expiry is not None and now >= expiry:
            return _expire(agent, new, lifecycle.ttl_seconds_after_finished)
        return Decision(status=new)
    expiry = expires_at(agent, status)
    if expiry is not None and now >= expiry and not running:
        return _expire(agent, status, lifecycle.ttl_seconds_after_finished)
    deadline = deadline_at(agent, status)
    if current is not None and not spec.suspend and deadline is not None and now >= deadline:
        seconds = lifecycle.active_deadline_seconds
        new = {**copy.deepcopy(status), "ended": ended_mark(agent, stamp), "finishedAt": stamp}
        event = AgentEventNote(
            WARNING, DEADLINE_EXCEEDED, f"ran for spec.lifecycle.activeDeadlineSeconds ({seconds}s): stopped"
        )
        if running:
            cause = f"activeDeadlineSeconds ({seconds}s) has passed since {status['activeSince']}"
            return Decision(tuple(_stopping(current, spec.stop_grace_period_seconds, cause, event)), status=new)
        # Exited (in a crash-loop back-off, say): not started again; the run ends here.
        ended_now = _lifecycle(Agent(agent.metadata, spec, new), current, now, idle_grace)
        assert ended_now is not None
        return dataclasses.replace(ended_now, events=(*ended_now.events, event))
    if current is None or not running or spec.suspend:
        return None
    idle = idle_at(agent, status, idle_grace)
    if idle is not None and now >= idle and current.state == "running" and status.get("phase") == "Running":
        seconds = lifecycle.idle_timeout_seconds
        cause = f"no activity for idleTimeoutSeconds ({seconds}s)"
        if lifecycle.idle_action == "Delete":
            event = AgentEventNote(NORMAL, "IdleDeleted", f"{cause}: deleted (onIdle: Delete)")
            return Decision((Operation("expire", agent.name, cause, event=event),), status=status)
        event = AgentEventNote(NORMAL, "IdleSuspended", f"{cause}: suspended (onIdle: Suspend); the workspace is kept")
        return Decision((Operation("suspend", agent.name, cause, event=event),), status=status)
    return None


def _expire(agent: Agent, status: dict[str, Any], ttl: int | None) -> Decision:
    message = f"deleted {ttl}s after it finished ({status.get('phase')}), spec.lifecycle.ttlSecondsAfterFinished"
    event = AgentEventNote(NORMAL, "TTLExpired", message)
    cause = f"ttlSecondsAfterFinished ({ttl}s) has passed since it finished at {status.get('finishedAt')}"
    return Decision((Operation("expire", agent.name, cause, event=event),), status=status)


def _converge_now(agent: Agent, current: Instance | None, desired: Desired, now: datetime, facts: Facts) -> Decision:
    spec = agent.spec
    stamp = iso(now)
    if spec.suspend and current is not None and current.running:
        stop = _stopping(current, spec.stop_grace_period_seconds, "spec.suspend is true")
        return Decision(tuple(stop), status=agent.status)
    network = desired.network_of(agent)
    if not spec.suspend and not facts.network_ready:
        ensure = Operation("ensure-network", network, "the agent's network must exist")
        return Decision((ensure,), status=agent.status)
    status = copy.deepcopy(agent.status)
    status["observedGeneration"] = agent.metadata.generation
    failed = status.get("startFailures") or {}
    if current is None or current.running or failed.get("containerId") != current.id:
        status.pop("startFailures", None)
        failed = {}
    if spec.suspend:
        status = clear_error(status)
        status["containerId"] = current.id if current else None
        status.pop("activeSince", None)  # a resume starts a new run: its deadline counts from then
        status = with_phase(
            status, "Suspended", ready=False, reason="Suspended", message="spec.suspend is true", now=stamp
        )
        return Decision(status=status)

    if current is not None and current.config_hash != desired.config_hash and desired.updatable:
        event = AgentEventNote(
            NORMAL, "Updating", f"spec changed (generation {agent.metadata.generation}): updating the instance"
        )
        status["restartCount"] = 0
        status.pop("backoff", None)
        status.pop("lastState", None)
        update = Operation("update", current.id, "the spec changed: its config hash differs", event=event)
        return Decision((update,), status=status)
    if current is not None and current.config_hash != desired.config_hash:
        event = AgentEventNote(
            NORMAL, "Recreating", f"spec changed (generation {agent.metadata.generation}): recreating the container"
        )
        cause = "the spec changed: its config hash differs"
        ops = _removal(current, spec.stop_grace_period_seconds, cause)
        ops[0] = Operation(ops[0].kind, ops[0].target, ops[0].cause, grace_seconds=ops[0].grace_seconds, event=event)
        status["restartCount"] = 0
        status.pop("backoff", None)
        status.pop("lastState", None)
        return Decision(tuple(ops), status=status)
    if current is None:
        create = Operation("create", agent.name, f"no instance runs generation {agent.metadata.generation}")
        return Decision((create,), status=status)

    status["containerId"] = current.id
    if current.node:
        status["node"] = current.node
    else:
        status.pop("node", None)
    ops = []
    if current.misnamed:
        ops.append(
            Operation(
                "rename",
                current.id,
                f"the container was renamed to {current.name}",
                event=AgentEventNote(WARNING, "Renamed", f"container had been renamed to {current.name}; renamed back"),
            )
        )
    if current.running and network not in current.networks:
        ops.append(
            Operation(
                "connect",
                current.id,
                f"the container is not on network {network}",
                event=AgentEventNote(WARNING, "Reconnected", f"container was off network {network}; reconnected"),
            )
        )
    if ops:
        return Decision(tuple(ops), status=status)
    if current.state == "lost":
        return _lost(status, current, stamp)
    if current.state == "starting":
        return _starting(status, current, stamp)
    if _unstartable(failed, now):
        return _replace_unstartable(agent, status, current, failed)
    if current.created:
        started = AgentEventNote(NORMAL, "Started", f"started container {current.id[:12]}")
        return Decision((Operation("start", current.id, "it was created", event=started),), status=status)
    if not current.running and agent.status.get("phase") == "Suspended":
        # Stopped by the controller for spec.suspend: resuming starts it again, whatever the restart
        # policy, and the stop is not an exit of the agent's (no restart counted, no back-off).
        resumed = AgentEventNote(NORMAL, "Resumed", f"spec.suspend is false: started container {current.id[:12]}")
        return Decision((Operation("start", current.id, "spec.suspend is false", event=resumed),), status=status)
    if current.running and spec.paused and current.state != "paused":
        paused = AgentEventNote(NORMAL, "Paused", f"spec.paused is true: froze container {current.id[:12]}")
        return Decision((Operation("pause", current.id, "spec.paused is true", event=paused),), status=status)
    if current.state == "paused" and not spec.paused:
        status["lastActivityTime"] = stamp  # thawing counts as activity: the idle timer starts again
        thawed = AgentEventNote(NORMAL, "Unpaused", f"spec.paused is false: thawed container {current.id[:12]}")
        return Decision((Operation("unpause", current.id, "spec.paused is false", event=thawed),), status=status)
    if current.state == "paused":
        return _paused(status, current, now)
    if current.running:
        return _running(agent, status, current, now, facts)
    return _exited(agent, status, current, now)


def _paused(status: dict[str, Any], current: Instance, now: datetime) -> Decision:
    """A frozen instance, as ``spec.paused`` asks: phase Paused (not crashed, not restarted)."""
    status["containerId"] = current.id
    status.setdefault("activeSince", iso(parse_runtime_time(current.started_at) or now))
    status = clear_error(status)
    message = "spec.paused is true: its processes are frozen, memory intact"
    return Decision(status=with_phase(status, "Paused", ready=False, reason="Paused", message=message, now=iso(now)))


def _starting(status: dict[str, Any], current: Instance, stamp: str) -> Decision:
    """The runtime is placing and starting the instance by itself (a scheduler's ``starting``): Pending,
    with the runtime's word on why it takes long (no node with room, say) as the error."""
    where = f" on node {current.node}" if current.node else ""
    status = with_phase(
        status, "Pending", ready=False, reason="Starting", message=f"the instance is being started{where}", now=stamp
    )
    if not current.error_code:
        return Decision(status=clear_error(status))
    return Decision(status=set_error(status, current.error_code, current.error, stamp))


def _lost(status: dict[str, Any], current: Instance, stamp: str) -> Decision:
    """The instance's host is gone: start it again elsewhere, whatever the restart policy (the agent did
    not exit), and without counting a restart."""
    message = f"node {current.node or '?'} is down: starting the agent on another node"
    event = AgentEventNote(WARNING, "NodeLost", message)
    status = with_phase(status, "Pending", ready=False, reason="NodeLost", message=message, now=stamp)
    return Decision((Operation("start", current.id, f"its node {current.node} is down", event=event),), status=status)


def _unstartable(failed: dict[str, Any], now: datetime) -> bool:
    since = parse_time(failed["since"]) if failed.get("since") else None
    return (
        int(failed.get("count", 0)) >= START_ATTEMPTS
        and since is not None
        and (now - since).total_seconds() >= START_REFUSAL_SECONDS
    )


def _replace_unstartable(agent: Agent, status: dict[str, Any], current: Instance, failed: dict[str, Any]) -> Decision:
    """The instance failed to start ``START_ATTEMPTS`` times: remove it, and the next round creates a new
    one from the same spec (the workspace is a volume of its own, so it stays). A restart that had to
    replace the instance is counted as a restart."""
    why = str(failed.get("message") or "the runtime refused")
    event = AgentEventNote(
        WARNING,
        "Replaced",
        f"container {current.id[:12]} could not be started ({failed['count']} attempts, last: {why}); "
        "replaced it with a new one",
    )
    status.pop("startFailures", None)
    if not current.created and agent.status.get("phase") != "Suspended":
        status["restartCount"] = int(status.get("restartCount", 0)) + 1
    cause = f"it could not be started {failed['count']} times"
    return Decision((Operation("remove", current.id, cause, event=event),), status=status)


def _running(agent: Agent, status: dict[str, Any], info: Instance, now: datetime, facts: Facts) -> Decision:
    """Status for an instance that runs, as it should."""
    stamp = iso(now)
    status["containerId"] = info.id
    status["startedAt"] = info.started_at
    status.setdefault("activeSince", iso(parse_runtime_time(info.started_at) or now))
    status.pop("finishedAt", None)
    status.pop("reason", None)
    if (
        status.get("error", {}).get("code") != RESOURCE_LIMIT
        or (status.get("lastState") or {}).get("reason") != "OOMKilled"
    ):
        status = clear_error(status)
    status = with_phase(status, "Running", ready=True, reason="Running", message="container is running", now=stamp)
    requeue: float | None = None
    events: list[AgentEventNote] = []
    known = status.get("credentials") or {}
    need: str | None = None
    if known.get("containerId") == info.id:
        need = str(known.get("message", "needs credentials"))
    else:
        status.pop("credentials", None)
        status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "CredentialsReady"]
        started = parse_runtime_time(info.started_at)
        if started is not None and (now - started).total_seconds() < CREDENTIALS_WINDOW_SECONDS:
            if info.id not in facts.output:
                return Decision(
                    (Operation("read-output", info.id, "the image says here whether it has credentials"),),
                    status=status,
                )
            need = credentials_needed(facts.output[info.id])
            if need is None:
                requeue = CREDENTIALS_RECHECK_SECONDS
    if need is not None:
        status = with_phase(status, "Running", ready=False, reason="NeedsCredentials", message=need, now=stamp)
        set_condition(status, "CredentialsReady", False, "NeedsCredentials", need, stamp)
        if known.get("containerId") != info.id:
            events.append(AgentEventNote(WARNING, "NeedsCredentials", need))
        status["credentials"] = {"containerId": info.id, "message": need}
    return Decision(status=status, events=tuple(events), requeue_after=requeue)


def credentials_needed(lines: Sequence[str]) -> str | None:
    """The agent image's own word that it has no credentials (its ``parallax: needs credentials:`` line)."""
    for line in reversed(lines):
        if line.startswith(CREDENTIALS_MARKER):
            return line[len("parallax: ") :].strip()
    return None


def _exited(agent: Agent, status: dict[str, Any], current: Instance, now: datetime) -> Decision:
    spec = agent.spec
    stamp = iso(now)
    events: list[AgentEventNote] = []
    finished = parse_runtime_time(current.finished_at) or now
    started = parse_runtime_time(current.started_at) or finished
    last = status.get("lastState") or {}
    if last.get("finishedAt") != current.finished_at:
        previous = (status.get("backoff") or {}).get("delaySeconds")
        decision = decide_exit(spec.restart_policy, current.exit_code, previous, (finished - started).total_seconds())
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
                "restartAt": iso(finished + timedelta(seconds=decision.delay)),
            }
        else:
            status.pop("backoff", None)
        if current.oom_killed:
            events.append(
                AgentEventNote(
                    WARNING, "OOMKilled", f"container was OOM-killed at its memory limit {spec.resources.memory}"
                )
            )
            limit = parse_memory(spec.resources.memory)
            status = set_error(
                status,
                RESOURCE_LIMIT,
                f"the container was OOM-killed at its memory limit of {spec.resources.memory} ({limit} bytes)",
                stamp,
            )
        elif current.exit_code == 0:
            events.append(AgentEventNote(NORMAL, "Completed", "container exited with code 0"))
        else:
            killed = " (killed)" if current.exit_code == 137 else ""
            events.append(AgentEventNote(WARNING, "Exited", f"container exited with code {current.exit_code}{killed}"))

    if not should_restart(spec.restart_policy, current.exit_code):
        phase = "Succeeded" if current.exit_code == 0 else "Failed"
        status.pop("activeSince", None)
        status.setdefault("finishedAt", iso(finished))  # once: a runtime without an exit time must not slide it
        status = with_phase(
            status,
            phase,
            ready=False,
            reason=status["lastState"]["reason"],
            message=f"container exited with code {current.exit_code}; restartPolicy is {spec.restart_policy}",
            now=stamp,
        )
        return Decision(status=status, events=tuple(events))

    if "backoff" not in status:
        # The exit was recorded under a policy that did not restart it (Never, OnFailure after exit 0) and
        # the policy now says restart: no back-off was owed, so the restart is immediate.
        status["backoff"] = {"delaySeconds": 0.0, "restartAt": iso(finished)}
    restart_at = parse_time(status["backoff"]["restartAt"])
    delay = status["backoff"]["delaySeconds"]
    if now < restart_at:
        if agent.phase != "CrashLoopBackOff" or last.get("finishedAt") != current.finished_at:
            events.append(AgentEventNote(WARNING, "BackOff", f"back-off {delay:g}s restarting the exited container"))
        status = with_phase(
            status,
            "CrashLoopBackOff",
            ready=False,
            reason="CrashLoopBackOff",
            message=f"back-off {delay:g}s restarting the exited container",
            now=stamp,
        )
        return Decision(status=status, events=tuple(events), requeue_after=(restart_at - now).total_seconds())
    status["restartCount"] = int(status.get("restartCount", 0)) + 1
    restarted = AgentEventNote(
        NORMAL,
        "Restarted",
        f"restarted container (restart {status['restartCount']}, policy {spec.restart_policy})",
    )
    cause = f"it exited with code {current.exit_code}; restartPolicy is {spec.restart_policy}"
    return Decision((Operation("start", current.id, cause, event=restarted),), status=status, events=tuple(events))


def after(op: Operation, instances: Sequence[Instance], agent: Agent | None, desired: Desired | None) -> list[Instance]:
    """The instances as ``op`` leaves them, as far as that is known without asking the runtime: what the
    executor assumes after a stop, remove, rename or connect, and what a dry run assumes of every step."""
    if op.kind == "remove":
        return [i for i in instances if i.id != op.target]
    if op.kind == "create" and agent is not None and desired is not None:
        made = Instance(
            id=f"(new instance of {agent.name})",
            name="",
            agent=agent.name,
            uid=agent.metadata.uid,
            config_hash=desired.config_hash,
            state="created",
            networks=(desired.network_of(agent),),  # a runtime creates an instance on its agent's network
        )
        return [*instances, made]
    changed: dict[str, Any]
    if op.kind == "stop":
        changed = {"state": "exited"}
    elif op.kind == "pause":
        changed = {"state": "paused"}
    elif op.kind == "unpause":
        changed = {"state": "running"}
    elif op.kind == "start":
        changed = {"state": "running", "started_at": None}
    elif op.kind == "rename":
        changed = {"misnamed": False}
    elif op.kind == "update" and desired is not None:
        changed = {"config_hash": desired.config_hash, "state": "starting"}
    elif op.kind == "connect" and agent is not None:
        network = desired.network_of(agent) if desired is not None else agent.spec.network
        changed = {"networks": (*next(i.networks for i in instances if i.id == op.target), network)}
    else:
        return list(instances)
    return [dataclasses.replace(i, **changed) if i.id == op.target else i for i in instances]


def plan(
    name: str,
    agent: Agent | None,
    instances: Sequence[Instance],
    desired: Desired | None,
    now: datetime,
    *,
    idle_grace: float = 0.0,
) -> list[Operation]:
    """Every operation a reconcile of ``agent`` (a record as it would be) would make, round after round,
    assuming each succeeds: what ``apply --dry-run`` shows. The network is taken as usable and the
    instances' output as saying nothing."""
    facts = Facts(network_ready=True)
    current = list(instances)
    agent = agent.copy() if agent is not None else None
    operations: list[Operation] = []
    for _ in range(MAX_PLAN_ROUNDS):
        decision = decide(name, agent, current, desired, now, facts, idle_grace=idle_grace)
        if agent is not None and decision.status is not None:
            agent.status = decision.status
        for op in decision.operations:
            if op.kind == "read-output":
                facts.output[op.target] = []
                continue
            if op.kind == "suspend" and agent is not None:
                agent.spec = dataclasses.replace(agent.spec, suspend=True)
            elif op.kind == "expire" and agent is not None:
                agent.metadata.deletion_timestamp = iso(now)
            operations.append(op)
            current = after(op, current, agent, desired)
        if decision.done or not decision.operations:
            break
    return operations
