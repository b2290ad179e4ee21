"""``FakeRuntime``: an in-memory, deterministic ``controller.runtime.interface.Runtime`` for unit tests.

It holds instances, networks, workspaces and a set of present images, and behaves like the local Docker
runtime where the reconciler can tell the difference: ``create`` refuses a missing image, a missing
network or a name already taken; ``start`` refuses an instance whose network is gone; ``stop`` and
``remove`` of an instance that is not there are no-ops (Docker's 304/404, which the driver tolerates);
``remove`` removes a running instance too (Docker's ``force``). Times come from a
``controller.model.clock.FakeClock``: ``started_at`` / ``finished_at`` are RFC 3339 strings with nanoseconds,
as Docker writes them, at ``EPOCH + clock.now()``; ``wall_time`` is the same instant as a datetime, to
give the reconciler as its ``now``.

Test hooks (plain methods, listed under "test hooks" below) change things behind the controller's back
(an instance exits, an image or a network disappears, an instance is renamed or disconnected, strangers
and orphans appear), make the runtime unreachable, or fail the next call of one verb. Every call the
controller makes is logged in ``calls`` (verb, target, the grace period of a ``stop``, and the error
code if it failed), so a test can assert exactly what was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import defaultdict, deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.config import Settings
from controller.model.agent import ANNOTATION_RESTARTED_AT, TYPES, Agent, container_name
from controller.model.clock import FakeClock
from controller.model.errors import CONTAINER_ERROR, IMAGE_NOT_FOUND, NETWORK_ERROR, SOCKET_ERROR, AgentError
from controller.runtime.docker.render import image_for, workspace_volume
from controller.runtime.interface import (
    Desired,
    ExecCommand,
    Instance,
    ManagedNetwork,
    NotRunning,
    PathStat,
    Runtime,
    RuntimeChange,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
"""The wall-clock instant of ``FakeClock.now() == 0``."""

STOP_EXIT_CODE = 143
"""What an instance stopped with ``stop`` exits with (its process ended by SIGTERM)."""

MUTATING_VERBS = frozenset(
    {"create", "start", "stop", "pause", "unpause", "remove", "rename", "connect", "remove_workspace", "remove_network"}
)
"""Verbs that change what the runtime holds (``ensure_*`` are idempotent and left out)."""

# Parts of the spec that the controller acts on but that do not go into the instance (as in
# ``controller.runtime.docker.render``): changing them must not recreate it (resuming a suspended agent starts it).
CONTROLLER_ONLY_FIELDS = ("suspend", "paused", "lifecycle", "restartPolicy", "stopGracePeriodSeconds", "workspace")


def rfc3339(moment: datetime, nanoseconds: int = 0) -> str:
    """``2026-01-01T00:00:10.000000000Z``: Docker's format, nine fractional digits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanoseconds:09d}Z"


@dataclass(frozen=True)
class Call:
    """One call the controller made: its verb (the ``Runtime`` method's name), its target (an instance
    id, an agent, network, image or workspace name), the grace period given to ``stop``, and the error
    code it raised, if any."""

    verb: str
    target: str = ""
    grace_seconds: int | None = None
    error: str | None = None


@dataclass
class FakeInstance:
    """What the fake holds for one instance (mutable; ``snapshot`` gives the ``Instance`` it reports)."""

    id: str
    name: str
    agent: str
    uid: str
    config_hash: str
    image: str
    state: str = "created"
    exit_code: int = 0
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    networks: list[str] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    stdin: list[bytes] = field(default_factory=list)
    body: Any = None
    stop_grace_seconds: list[int] = field(default_factory=list)
    """The grace period of every ``stop`` it received, in order."""

    def snapshot(self) -> Instance:
        return Instance(
            id=self.id,
            name=self.name,
            agent=self.agent,
            uid=self.uid,
            config_hash=self.config_hash,
            state=self.state,
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            started_at=self.started_at,
            finished_at=self.finished_at,
            networks=tuple(self.networks),
            misnamed=self.name != container_name(self.agent),
        )

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")


@dataclass
class FakeNetwork:
    id: str
    name: str
    managed: bool = True


class FakeLiveViews:
    """``LiveViews`` over the fake's instances: their output, a constant sample, their stdin."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self._runtime = runtime

    @contextlib.asynccontextmanager
    async def open_logs(
        self, instance_id: str, *, tail: str, since: int | None, timestamps: bool, follow: bool
    ) -> AsyncIterator[AsyncIterator[str]]:
        self._runtime._call("logs", instance_id)
        lines = list(self._runtime._get(instance_id).output)
        if tail != "all":
            lines = lines[-int(tail) :] if int(tail) > 0 else []

        async def each() -> AsyncIterator[str]:
            for line in lines:
                yield line

        yield each()

    async def stats(self, instance_id: str) -> dict[str, Any]:
        self._runtime._call("stats", instance_id)
        instance = self._runtime._get(instance_id)
        return {"running": instance.running, "memory_stats": {"usage": 0}, "pids_stats": {"current": 1}}

    async def write_stdin(self, instance_id: str, data: bytes) -> None:
        self._runtime._call("write_stdin", instance_id)
        instance = self._runtime._get(instance_id)
        if not instance.running:
            raise AgentError(CONTAINER_ERROR, f"container {instance_id[:12]} is not running")
        instance.stdin.append(data)

    @contextlib.asynccontextmanager
    async def open_exec(self, instance_id: str, command: ExecCommand) -> AsyncIterator[FakeExec]:
        """A command that runs nothing: its stdout is its argv, one per line, and it exits 0."""
        self._runtime._call("exec", instance_id)
        if not self._runtime._get(instance_id).running:
            raise NotRunning(f"container {instance_id[:12]} is not running")
        yield FakeExec("".join(f"{arg}\n" for arg in command.argv).encode())

    async def stat_path(self, instance_id: str, path: str) -> PathStat | None:
        self._runtime._call("stat_path", instance_id)
        return None

    @contextlib.asynccontextmanager
    async def open_archive(self, instance_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self._runtime._call("open_archive", instance_id)
        raise AgentError(CONTAINER_ERROR, f"{path} does not exist in the fake runtime")
        yield  # pragma: no cover

    async def file_owner(self, instance_id: str) -> tuple[int, int]:
        return 1000, 1000

    async def put_archive(self, instance_id: str, directory: str, body: AsyncIterable[bytes]) -> None:
        self._runtime._call("put_archive", instance_id)
        async for _ in body:
            pass


class FakeExec:
    """The fake's started command: its output, then its end (exit code 0)."""

    def __init__(self, output: bytes) -> None:
        self._output = [(1, output)] if output else []
        self.killed = False

    async def read(self) -> tuple[int, bytes] | None:
        return self._output.pop(0) if self._output else None

    async def write(self, data: bytes) -> None:
        return None

    async def close_stdin(self) -> None:
        return None

    async def resize(self, rows: int, cols: int) -> None:
        return None

    async def exit_code(self) -> int | None:
        return None if self._output else 0

    async def kill(self) -> bool:
        self.killed = True
        self._output.clear()
        return True


class FakeRuntime:
    """The ``Runtime`` the reconcile branch tests run against; nothing here touches Docker."""

    def __init__(
        self,
        clock: FakeClock | None = None,
        settings: Settings | None = None,
        *,
        images: Iterable[str] | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.settings = settings or Settings()
        self.instances_by_id: dict[str, FakeInstance] = {}
        self.networks: dict[str, FakeNetwork] = {}
        self.workspaces: dict[str, str] = {}
        """Workspace volume name -> the agent it belongs to ("" for a volume that is not ours)."""
        if images is None:
            prefix = self.settings.image_prefix
            images = {f"{prefix}{'base' if t == 'custom' else t}:latest" for t in TYPES}
        self.images: set[str] = set(images)
        self.calls: list[Call] = []
        self.reachable = True
        self.boot_output: dict[str, list[str]] = {}
        """Lines an instance of an image prints when it starts (``print_on_start``)."""
        self._failures: dict[str, deque[AgentError]] = defaultdict(deque)
        self._streams: list[asyncio.Queue[RuntimeChange | AgentError | None]] = []
        self._serial = 0
        self._live = FakeLiveViews(self)
        self.opened = False
        self.classes: frozenset[str] = frozenset({"runc"})
        """What ``runtime_classes`` answers (a test adds ``gvisor``)."""

    # -- time --------------------------------------------------------------------------------------

    def wall_time(self) -> datetime:
        """The clock's now as a wall-clock instant (what to give ``Reconciler(now=...)``)."""
        return EPOCH + timedelta(microseconds=self._nanoseconds() // 1000)

    def timestamp(self) -> str:
        """The clock's now as the runtime writes it (RFC 3339, nanoseconds)."""
        total = self._nanoseconds()
        return rfc3339(EPOCH + timedelta(seconds=total // 1_000_000_000), total % 1_000_000_000)

    def _nanoseconds(self) -> int:
        return round(self.clock.now() * 1_000_000_000)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _call(self, verb: str, target: str = "", grace_seconds: int | None = None) -> None:
        """Log a call and raise what the test arranged for it (unreachable, or a failure of this verb)."""
        error: AgentError | None = None
        if not self.reachable:
            error = AgentError(SOCKET_ERROR, "cannot connect to the runtime (the fake was made unreachable)")
        elif self._failures[verb]:
            error = self._failures[verb].popleft()
        self.calls.append(Call(verb, target, grace_seconds, error.code if error else None))
        if error is not None:
            raise error

    def _next_id(self, kind: str) -> str:
        self._serial += 1
        return hashlib.sha256(f"fake-{kind}-{self._serial}".encode()).hexdigest()

    def _get(self, instance_id: str) -> FakeInstance:
        instance = self.instances_by_id.get(instance_id)
        if instance is None:
            raise AgentError(CONTAINER_ERROR, f"No such container: {instance_id}")
        return instance

    def _emit(self, change: RuntimeChange) -> None:
        for stream in self._streams:
            stream.put_nowait(change)

    def _named(self, name: str) -> FakeInstance | None:
        return next((i for i in self.instances_by_id.values() if i.name == name), None)

    # -- the Runtime protocol ----------------------------------------------------------------------

    async def open(self) -> None:
        self._call("open")
        self.opened = True

    async def close(self) -> None:
        self.opened = False
        for stream in self._streams:
            stream.put_nowait(None)

    async def ping(self) -> None:
        self._call("ping")

    async def runtime_classes(self) -> frozenset[str] | None:
        return self.classes if self.reachable else None

    def render(self, agent: Agent) -> Desired:
        """Pure and deterministic: the hash covers the spec (secrets included, not redacted) but the
        fields only the controller acts on, the ``parallax.ai/restartedAt`` annotation, the uid, the
        image and the controller instance."""
        spec = agent.spec.to_dict(redact=False)
        for key in CONTROLLER_ONLY_FIELDS:
            spec.pop(key, None)
        image = image_for(agent.spec, self.settings)
        hashed = {
            "name": container_name(agent.name),
            "agent": agent.name,
            "uid": agent.metadata.uid,
            "image": image,
            "instance": self.settings.instance,
            "restartedAt": agent.metadata.annotations.get(ANNOTATION_RESTARTED_AT),
            "spec": spec,
        }
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
        return Desired(config_hash=digest, image=image, body={**hashed, "generation": agent.metadata.generation})

    async def agents_with_instances(self) -> set[str]:
        self._call("agents_with_instances")
        return {i.agent for i in self.instances_by_id.values()}

    async def instances(self, agent: str) -> list[Instance]:
        self._call("instances", agent)
        return [i.snapshot() for i in self.instances_by_id.values() if i.agent == agent]

    async def instance(self, instance_id: str) -> Instance | None:
        self._call("instance", instance_id)
        found = self.instances_by_id.get(instance_id)
        return found.snapshot() if found is not None else None

    async def image_present(self, image: str) -> bool:
        self._call("image_present", image)
        return image in self.images

    async def ensure_network(self, name: str) -> bool:
        self._call("ensure_network", name)
        if name in self.networks:
            return False
        self.networks[name] = FakeNetwork(self._next_id("network"), name, managed=True)
        return True

    async def ensure_workspace(self, agent: Agent) -> None:
        volume = workspace_volume(agent.name, self.settings.instance)
        self._call("ensure_workspace", volume)
        owner = self.workspaces.setdefault(volume, agent.name)
        if owner != agent.name:
            raise AgentError(CONTAINER_ERROR, f"volume {volume} exists and is not this agent's: it is not mounted")

    async def remove_workspace(self, agent: Agent) -> None:
        volume = workspace_volume(agent.name, self.settings.instance)
        self._call("remove_workspace", volume)
        if self.workspaces.get(volume) == agent.name:
            del self.workspaces[volume]

    async def create(self, agent: Agent, desired: Desired) -> Instance:
        name = container_name(agent.name)
        self._call("create", agent.name)
        if self._named(name) is not None:
            raise AgentError(CONTAINER_ERROR, f'Conflict. The container name "/{name}" is already in use')
        if desired.image not in self.images:
            raise AgentError(IMAGE_NOT_FOUND, f"No such image: {desired.image}")
        if agent.spec.network not in self.networks:
            raise AgentError(NETWORK_ERROR, f"network {agent.spec.network} not found")
        instance = FakeInstance(
            id=self._next_id("instance"),
            name=name,
            agent=agent.name,
            uid=agent.metadata.uid,
            config_hash=desired.config_hash,
            image=desired.image,
            networks=[agent.spec.network],
            aliases={agent.spec.network: [agent.name]},
            body=desired.body,
        )
        self.instances_by_id[instance.id] = instance
        self._emit(RuntimeChange("instance", agent=agent.name))
        return instance.snapshot()

    async def start(self, instance_id: str) -> None:
        self._call("start", instance_id)
        instance = self._get(instance_id)
        if instance.running:
            return
        for network in instance.networks:
            if network not in self.networks:
                raise AgentError(NETWORK_ERROR, f"network {network} not found")
        instance.state = "running"
        instance.exit_code, instance.oom_killed = 0, False
        instance.started_at = self.timestamp()
        instance.output += self.boot_output.get(instance.image, [])
        self._emit(RuntimeChange("instance", agent=instance.agent))

    async def stop(self, instance_id: str, grace_seconds: int) -> None:
        self._call("stop", instance_id, grace_seconds=grace_seconds)
        instance = self.instances_by_id.get(instance_id)
        if instance is None or not instance.running:
            return
        instance.stop_grace_seconds.append(grace_seconds)
        instance.state, instance.exit_code = "exited", STOP_EXIT_CODE
        instance.finished_at = self.timestamp()
        self._emit(RuntimeChange("instance", agent=instance.agent))

    async def pause(self, instance_id: str) -> None:
        self._call("pause", instance_id)
        instance = self._get(instance_id)
        if instance.state == "paused":
            return
        if instance.state != "running":
            raise AgentError(CONTAINER_ERROR, f"container {instance_id} is not running")
        instance.state = "paused"
        self._emit(RuntimeChange("instance", agent=instance.agent))

    async def unpause(self, instance_id: str) -> None:
        self._call("unpause", instance_id)
        instance = self._get(instance_id)
        if instance.state == "paused":
            instance.state = "running"
            self._emit(RuntimeChange("instance", agent=instance.agent))

    async def update(self, instance_id: str, desired: Desired) -> None:
        raise AgentError(CONTAINER_ERROR, "the fake runtime's instances are made again, not updated")

    async def remove(self, instance_id: str) -> None:
        self._call("remove", instance_id)
        instance = self.instances_by_id.pop(instance_id, None)
        if instance is not None:
            self._emit(RuntimeChange("instance", agent=instance.agent))

    async def rename(self, instance_id: str, agent: str) -> None:
        self._call("rename", instance_id)
        instance = self._get(instance_id)
        name = container_name(agent)
        holder = self._named(name)
        if holder is not None and holder is not instance:
            raise AgentError(CONTAINER_ERROR, f'Conflict. The container name "/{name}" is already in use')
        instance.name = name

    async def connect(self, instance_id: str, network: str, aliases: list[str]) -> None:
        self._call("connect", instance_id)
        instance = self._get(instance_id)
        if network not in self.networks:
            raise AgentError(NETWORK_ERROR, f"network {network} not found")
        if network not in instance.networks:
            instance.networks.append(network)
        instance.aliases[network] = list(aliases)

    async def recent_output(self, instance_id: str, lines: int) -> list[str]:
        self._call("recent_output", instance_id)
        output = self._get(instance_id).output
        return list(output[-lines:]) if lines > 0 else []

    async def managed_networks(self) -> list[ManagedNetwork]:
        self._call("managed_networks")
        return [ManagedNetwork(n.id, n.name) for n in self.networks.values() if n.managed]

    async def network_in_use(self, network_id: str) -> bool:
        self._call("network_in_use", network_id)
        name = next((n.name for n in self.networks.values() if n.id == network_id), None)
        return name is not None and any(name in i.networks for i in self.instances_by_id.values())

    async def remove_network(self, network_id: str) -> None:
        self._call("remove_network", network_id)
        for name, network in list(self.networks.items()):
            if network.id == network_id:
                del self.networks[name]

    def changes(self) -> AsyncIterator[RuntimeChange]:
        """Changes the fake (or a test hook) made from this call on, until ``end_changes``, ``close`` or
        unreachability. The stream is open once this returns, before it is first iterated."""
        stream: asyncio.Queue[RuntimeChange | AgentError | None] = asyncio.Queue()
        self._streams.append(stream)
        return self._follow(stream)

    async def _follow(self, stream: asyncio.Queue[RuntimeChange | AgentError | None]) -> AsyncIterator[RuntimeChange]:
        try:
            self._call("changes")
            while True:
                item = await stream.get()
                if item is None:
                    return
                if isinstance(item, AgentError):
                    raise item
                yield item
        finally:
            if stream in self._streams:
                self._streams.remove(stream)

    @property
    def live(self) -> FakeLiveViews:
        return self._live

    # -- test hooks: what happens behind the controller's back -------------------------------------

    def exit(self, instance_id: str, code: int, oom_killed: bool = False) -> None:
        """The instance's process exits with ``code`` now (OOM-killed if told so)."""
        instance = self._get_for_hook(instance_id)
        instance.state, instance.exit_code, instance.oom_killed = "exited", code, oom_killed
        instance.finished_at = self.timestamp()
        self._emit(RuntimeChange("instance", agent=instance.agent))

    def add_image(self, image: str) -> None:
        self.images.add(image)
        self._emit(RuntimeChange("image-added"))

    def remove_image(self, image: str) -> None:
        self.images.discard(image)
        self._emit(RuntimeChange("image-removed"))

    def add_network(self, name: str, *, managed: bool = False) -> FakeNetwork:
        """A network made by someone else (not labelled ours unless ``managed``)."""
        network = FakeNetwork(self._next_id("network"), name, managed=managed)
        self.networks[name] = network
        return network

    def drop_network(self, name: str) -> None:
        """Someone disconnects every instance from network ``name`` and removes it (``docker network
        disconnect -f`` then ``docker network rm``)."""
        for instance in self.instances_by_id.values():
            if name in instance.networks:
                self.disconnect_instance(instance.id, name)
        del self.networks[name]
        self._emit(RuntimeChange("network-removed", network=name))

    def rename_instance(self, instance_id: str, new_name: str) -> None:
        """Someone renames the instance (``docker rename``)."""
        self._get_for_hook(instance_id).name = new_name
        self._emit(RuntimeChange("instance", agent=self.instances_by_id[instance_id].agent))

    def disconnect_instance(self, instance_id: str, network: str | None = None) -> None:
        """Someone disconnects the instance from ``network`` (by default its first one)."""
        instance = self._get_for_hook(instance_id)
        network = network or instance.networks[0]
        instance.networks.remove(network)
        instance.aliases.pop(network, None)
        self._emit(RuntimeChange("network-detached", instance_id=instance_id, network=network))

    def add_instance(
        self,
        agent: str,
        uid: str,
        *,
        name: str | None = None,
        config_hash: str = "",
        state: str = "running",
        network: str | None = None,
        image: str | None = None,
    ) -> str:
        """An instance labelled as this controller's, claiming ``agent`` with ``uid``, made by someone
        else (its network, by default the settings' one, is made if missing); its id."""
        network = network or self.settings.network
        if network not in self.networks:
            self.add_network(network, managed=True)
        instance = FakeInstance(
            id=self._next_id("instance"),
            name=name or container_name(agent),
            agent=agent,
            uid=uid,
            config_hash=config_hash,
            image=image or f"{self.settings.image_prefix}base:latest",
            state=state,
            networks=[network],
            aliases={network: [agent]},
        )
        if state in ("running", "exited"):
            instance.started_at = self.timestamp()
        if state == "exited":
            instance.finished_at = self.timestamp()
        self.instances_by_id[instance.id] = instance
        self._emit(RuntimeChange("instance", agent=agent))
        return instance.id

    def add_stranger(self, agent: str, uid: str = "stranger-uid", *, name: str | None = None) -> str:
        """A running instance whose labels claim ``agent`` with another uid (by default holding the
        agent's instance name)."""
        return self.add_instance(agent, uid, name=name)

    def add_orphan(self, agent: str, *, state: str = "running") -> str:
        """An instance of an agent that has no record (its controller lost the record, say)."""
        return self.add_instance(agent, f"orphan-uid-of-{agent}", state=state)

    def add_foreign_workspace(self, agent: Agent) -> None:
        """A volume with the agent's workspace name that is not the agent's."""
        self.workspaces[workspace_volume(agent.name, self.settings.instance)] = ""

    def write_output(self, instance_id: str, *lines: str) -> None:
        """The instance prints ``lines`` (stdout and stderr are one stream here)."""
        self._get_for_hook(instance_id).output.extend(lines)

    def print_on_start(self, image: str, *lines: str) -> None:
        """Every instance of ``image`` prints ``lines`` each time it starts."""
        self.boot_output[image] = list(lines)

    def set_reachable(self, reachable: bool) -> None:
        """Unreachable: every call raises ``AgentError(SOCKET_ERROR)`` and open change streams break."""
        self.reachable = reachable
        if not reachable:
            for stream in self._streams:
                stream.put_nowait(AgentError(SOCKET_ERROR, "the runtime's change stream broke"))

    def fail_next(self, verb: str, error: AgentError) -> None:
        """The next call of ``verb`` (a ``Runtime`` method's name) raises ``error`` instead of acting."""
        self._failures[verb].append(error)

    def end_changes(self) -> None:
        """Open change streams end (the engine closed the connection)."""
        for stream in self._streams:
            stream.put_nowait(None)

    # -- test hooks: reading what was done ---------------------------------------------------------

    def reset_calls(self) -> None:
        self.calls.clear()

    def verbs(self) -> list[str]:
        return [c.verb for c in self.calls]

    def mutations(self) -> list[tuple[str, str]]:
        """(verb, target) of every successful call that changed what the runtime holds, in order."""
        return [(c.verb, c.target) for c in self.calls if c.verb in MUTATING_VERBS and c.error is None]

    def held(self, agent: str) -> list[FakeInstance]:
        """The instances claiming ``agent``, as the fake holds them."""
        return [i for i in self.instances_by_id.values() if i.agent == agent]

    def _get_for_hook(self, instance_id: str) -> FakeInstance:
        instance = self.instances_by_id.get(instance_id)
        if instance is None:
            raise KeyError(f"the fake holds no instance {instance_id}")
        return instance


def _is_a_runtime(runtime: FakeRuntime) -> Runtime:
    """mypy checks here that the fake implements the whole ``Runtime`` interface."""
    return runtime
