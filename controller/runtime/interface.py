"""The runtime interface: what the reconciler needs from whatever runs agents, in the agent model's terms.

The reconciler decides; a runtime acts. A runtime knows how to render an Agent into the thing it runs
(a Docker container, a Swarm service, an entry in the fake runtime's memory), how to recognise its own
instances (labels, for Docker), how to map its engine's events to agent names, and how to classify its
engine's failures into error codes. Nothing above a runtime sees an engine's vocabulary: the reconciler
works with ``Instance``, ``Desired`` and ``RuntimeChange`` only.

A new backend implements ``Runtime``; ``controller.runtime.fake`` is the in-memory one the unit tests of
the reconcile branches use, ``controller.runtime.docker.driver`` the local Docker daemon.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from controller.model.agent import Agent

InstanceState = Literal["created", "starting", "running", "paused", "restarting", "removing", "exited", "dead", "lost"]
"""Docker's container states, and two of a scheduler's: ``starting`` (being scheduled and started, which
the runtime does by itself; ``error_code`` says why it is taking long) and ``lost`` (its node is gone:
``start`` makes it again elsewhere)."""


@dataclass(frozen=True)
class Instance:
    """One observed instance of an agent (a container, for Docker), as the runtime reports it now."""

    id: str
    name: str
    agent: str
    uid: str
    config_hash: str
    state: str
    exit_code: int = 0
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str = ""
    networks: tuple[str, ...] = ()
    restart_count: int = 0
    misnamed: bool = False
    """The instance does not carry the name the runtime gives this agent (renamed behind our back)."""
    node: str = ""
    """The host it runs on, for a runtime of many hosts (empty for the local one)."""
    error_code: str = ""
    """The error code of ``error``, when the runtime classified it (a task its scheduler cannot place)."""
    egress_gateway: str = ""
    """The egress gateway address the instance was given (its proxy variables), when it has one."""

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")

    @property
    def created(self) -> bool:
        """Made but never started (a controller stopped between create and start leaves one)."""
        return self.state == "created"


@dataclass(frozen=True)
class Desired:
    """What a runtime will run for an agent: ``config_hash`` digests everything that, when it changes,
    needs a new instance; ``body`` is the runtime's own rendering, handed back to ``create``."""

    config_hash: str
    image: str
    body: Any
    updatable: bool = False
    network: str = ""
    """The network the instance joins, when the runtime chooses one other than ``spec.network`` (an
    agent whose egress goes through the gateway joins the network's internal twin); empty: ``spec.network``."""

    def network_of(self, agent: Agent) -> str:
        return self.network or agent.spec.network

    """The runtime changes an existing instance to a new config in place (``Runtime.update``: a Swarm
    service update) instead of the instance being removed and made again (a container)."""


RuntimeChangeKind = Literal["instance", "network-detached", "network-removed", "image-added", "image-removed"]


@dataclass(frozen=True)
class RuntimeChange:
    """Something changed in the runtime, mapped to what it concerns: one agent's instance; an instance
    detached from a network (``instance_id``, and ``agent`` when the runtime knows whose it is); a network
    removed; an image added or removed."""

    kind: RuntimeChangeKind
    agent: str | None = None
    instance_id: str | None = None
    network: str | None = None


@dataclass(frozen=True)
class ManagedNetwork:
    id: str
    name: str


class NotRunning(Exception):
    """A live view that needs the instance running found it stopped (answered 409 by the API)."""


class PathUnresolvable(Exception):
    """The engine cannot resolve a path of an instance (a symlink loop): the caller's path is at fault."""


@dataclass(frozen=True)
class ExecCommand:
    """A command to run inside a running instance: ``argv`` as given (no shell), ``env`` added to the
    instance's own, ``user`` empty for the instance's user, ``tty`` for a terminal, ``stdin`` to attach one."""

    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: str = ""
    user: str = ""
    tty: bool = False
    stdin: bool = False


class ExecProcess(Protocol):
    """A started command (``LiveViews.open_exec``)."""

    killed: bool

    async def read(self) -> tuple[int, bytes] | None:
        """The next piece of output: ``(1, data)`` stdout, ``(2, data)`` stderr; None at its end."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, rows: int, cols: int) -> None: ...

    async def exit_code(self) -> int | None: ...

    async def kill(self) -> bool:
        """Kill the command and what it started; True once the engine reports it ended."""
        ...


@dataclass(frozen=True)
class PathStat:
    """One path of an instance, as the engine stats it without following its last component: ``mode``
    in Go's ``os.FileMode`` bits (Docker's), ``link_target`` the resolved target of a symlink."""

    name: str
    size: int
    mode: int
    mtime: str
    link_target: str = ""


class LiveViews(Protocol):
    """Views of a running instance for the API (DESIGN allows these direct calls: they create, start,
    stop and remove nothing). Live views use engine connections of their own, never the reconciler's,
    and a stream releases its connection when its consumer leaves the ``open_logs`` block."""

    def open_logs(
        self, instance_id: str, *, tail: str, since: int | None, timestamps: bool, follow: bool
    ) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """``async with live.open_logs(...) as lines``: the engine has answered (its error is raised here);
        ``lines`` are whole lines of the instance's stdout and stderr."""
        ...

    async def stats(self, instance_id: str) -> dict[str, Any]:
        """One resource-usage sample, in the Docker Engine stats format."""
        ...

    async def write_stdin(self, instance_id: str, data: bytes) -> None: ...

    def open_exec(self, instance_id: str, command: ExecCommand) -> AbstractAsyncContextManager[ExecProcess]:
        """``async with live.open_exec(...) as process``: the command runs; leaving the block kills it if
        it still runs and releases its connection."""
        ...

    async def stat_path(self, instance_id: str, path: str) -> PathStat | None:
        """The instance's ``path`` (running or stopped instance), None when it does not exist."""
        ...

    def open_archive(self, instance_id: str, path: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``path`` as a tar stream; the connection is released when the block is left."""
        ...

    async def file_owner(self, instance_id: str) -> tuple[int, int]:
        """The numeric user and group files written for the agent get."""
        ...

    async def put_archive(self, instance_id: str, directory: str, body: AsyncIterable[bytes]) -> None:
        """Extract the tar ``body`` (read as it goes) into ``directory``."""
        ...


class Runtime(Protocol):
    """The verbs of the reconcile loop. Every failure is an ``AgentError`` with an error code
    (``SOCKET_ERROR`` when the engine cannot be reached, never "nothing there")."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def runtime_classes(self) -> frozenset[str] | None:
        """The ``spec.runtimeClassName`` values this engine can run now (``runc`` always), for admission;
        None when the engine cannot be asked."""
        ...

    def render(self, agent: Agent) -> Desired:
        """Pure: what this runtime would run for ``agent`` now."""
        ...

    async def agents_with_instances(self) -> set[str]:
        """Names of the agents that instances of this controller belong to (for resync and GC)."""
        ...

    async def instances(self, agent: str) -> list[Instance]:
        """Every instance of this controller claiming to be ``agent``'s, in any state."""
        ...

    async def instance(self, instance_id: str) -> Instance | None: ...

    async def image_present(self, image: str) -> bool: ...

    async def ensure_network(self, name: str) -> bool:
        """Make a usable network exist (labelled managed when made here); True if it was made now."""
        ...

    async def ensure_workspace(self, agent: Agent) -> None: ...

    async def remove_workspace(self, agent: Agent) -> None: ...

    async def create(self, agent: Agent, desired: Desired) -> Instance:
        """Make (not start) the agent's instance, on the agent's network; the instance as made (state
        ``created``)."""
        ...

    async def start(self, instance_id: str) -> None: ...

    async def update(self, instance_id: str, desired: Desired) -> None:
        """Change the instance to ``desired`` in place; asked only when ``desired.updatable``."""
        ...

    async def stop(self, instance_id: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``."""
        ...

    async def pause(self, instance_id: str) -> None:
        """Freeze the instance's processes, memory intact (Docker pause); the instance reports state
        ``paused`` after. Pausing a paused instance is no error."""
        ...

    async def unpause(self, instance_id: str) -> None:
        """Thaw a paused instance at once; unpausing one that is not paused is no error."""
        ...

    async def remove(self, instance_id: str) -> None: ...

    async def rename(self, instance_id: str, agent: str) -> None:
        """Give the instance back the name this runtime gives ``agent``'s instance."""
        ...

    async def connect(self, instance_id: str, network: str, aliases: list[str]) -> None: ...

    async def recent_output(self, instance_id: str, lines: int) -> list[str]: ...

    async def managed_networks(self) -> list[ManagedNetwork]: ...

    async def network_in_use(self, network_id: str) -> bool: ...

    async def remove_network(self, network_id: str) -> None: ...

    def changes(self) -> AsyncIterator[RuntimeChange]:
        """One connection to the engine's stream of changes, ending when that connection does. A runtime
        that caches what it knows forgets it when a stream starts (changes may have been missed)."""
        ...

    @property
    def live(self) -> LiveViews: ...
