"""All Docker Engine I/O of the controller, through aiodocker, with failures mapped to error codes.

Nothing here decides anything: the reconciler asks, this module performs and reports. Every call has
a timeout, and a daemon that cannot be reached is always ``SOCKET_ERROR``, never "no containers".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import aiodocker
import aiohttp

from controller.config import Settings
from controller.model.agent import container_name
from controller.model.errors import (
    CONTAINER_ERROR,
    IMAGE_NOT_FOUND,
    NETWORK_ERROR,
    RESOURCE_LIMIT,
    SOCKET_ERROR,
    AgentError,
)
from controller.runtime.docker.cache import Listed
from controller.runtime.docker.live_work import ExecAndFiles
from controller.runtime.docker.render import (
    LABEL_AGENT,
    LABEL_EGRESS_GATEWAY,
    LABEL_HASH,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_UID,
)
from controller.runtime.interface import Instance, ManagedNetwork

AIODOCKER_UNREACHABLE = 900
"""aiodocker's status for a request whose connection failed (it wraps aiohttp's connection errors)."""
_UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError, asyncio.TimeoutError)
_NEVER = "0001-01-01T00:00:00Z"


def instance_from_inspect(data: dict[str, Any]) -> Instance:
    """A container as the runtime interface's ``Instance``: its labels say whose it is."""
    state = data.get("State") or {}
    labels = (data.get("Config") or {}).get("Labels") or {}
    name = str(data.get("Name", "")).lstrip("/")
    agent = str(labels.get(LABEL_AGENT, ""))
    return Instance(
        id=data["Id"],
        name=name,
        agent=agent,
        uid=str(labels.get(LABEL_UID, "")),
        config_hash=str(labels.get(LABEL_HASH, "")),
        state=str(state.get("Status", "")),
        exit_code=int(state.get("ExitCode") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=state.get("StartedAt") if state.get("StartedAt") != _NEVER else None,
        finished_at=state.get("FinishedAt") if state.get("FinishedAt") != _NEVER else None,
        error=str(state.get("Error") or ""),
        networks=tuple(sorted(((data.get("NetworkSettings") or {}).get("Networks") or {}).keys())),
        restart_count=int(data.get("RestartCount") or 0),
        misnamed=name != container_name(agent),
        egress_gateway=str(labels.get(LABEL_EGRESS_GATEWAY, "")),
    )


class DockerObserver(Protocol):
    """Hooks a metrics layer can implement without the driver knowing about Prometheus."""

    def on_docker_call(self, operation: str, seconds: float, error_code: str | None) -> None: ...

    def on_docker_event(self, event: dict[str, Any]) -> None: ...

    def on_cache_size(self, containers: int) -> None: ...

    def on_relist(self, reason: str) -> None: ...

    def on_node_no_new_privileges(self, node: str, enforced: bool) -> None: ...


class NoopDockerObserver:
    def on_docker_call(self, operation: str, seconds: float, error_code: str | None) -> None:
        pass

    def on_docker_event(self, event: dict[str, Any]) -> None:
        pass

    def on_cache_size(self, containers: int) -> None:
        pass

    def on_relist(self, reason: str) -> None:
        pass

    def on_node_no_new_privileges(self, node: str, enforced: bool) -> None:
        pass


_P = ParamSpec("_P")
_R = TypeVar("_R")


# Set while a call holds one of the driver's slots, so nested calls do not wait for a second one.
_holding_slot: contextvars.ContextVar[bool] = contextvars.ContextVar("holding_docker_slot", default=False)


def _timed(
    method: Callable[Concatenate[DockerDriver, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[DockerDriver, _P], Coroutine[Any, Any, _R]]:
    """Bound concurrent calls to the daemon (PARALLAX_DOCKER_CONCURRENCY), and report each call's
    duration and error code (``None`` on success) to the driver's observer."""
    operation = method.__name__

    @functools.wraps(method)
    async def timed(driver: DockerDriver, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        started = time.perf_counter()
        code: str | None = None
        try:
            if _holding_slot.get():
                return await method(driver, *args, **kwargs)
            async with driver.slots:
                token = _holding_slot.set(True)
                try:
                    return await method(driver, *args, **kwargs)
                finally:
                    _holding_slot.reset(token)
        except AgentError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            code = "UNEXPECTED"
            raise
        finally:
            driver.observer.on_docker_call(operation, time.perf_counter() - started, code)

    return timed


def _unreachable(exc: BaseException) -> AgentError:
    if isinstance(exc, asyncio.TimeoutError):
        return AgentError(SOCKET_ERROR, "the Docker daemon did not answer in time (PARALLAX_DOCKER_TIMEOUT)")
    return AgentError(SOCKET_ERROR, f"cannot reach the Docker daemon: {type(exc).__name__}: {exc}".rstrip(": "))


def _resource_refusal(message: str) -> bool:
    lowered = message.lower()
    return any(
        phrase in lowered for phrase in ("range of cpus", "nanocpus", "minimum memory", "memory limit", "cpu", "pids")
    )


def _limit_field(lowered: str) -> str:
    """`` (spec.resources.cpu)``: the field of the spec a refusal of the limits is about, when it says."""
    for word, field in (("cpu", "cpu"), ("memory", "memory"), ("pids", "pids")):
        if word in lowered:
            return f" (spec.resources.{field})"
    return ""


_GOING_AWAY = ("database not open", "is closing")
"""What dockerd answers while it shuts down (its stores and its containerd connection closed under a
request it still serves on a kept-alive connection): the daemon is going, the request is not refused."""


def _classify(exc: aiodocker.DockerError, doing: str) -> AgentError:
    """The error code of a refused create or start, from what Docker said."""
    message = exc.message or str(exc)
    lowered = message.lower()
    if any(phrase in lowered for phrase in _GOING_AWAY):
        return AgentError(SOCKET_ERROR, f"{doing}: the Docker daemon is shutting down: {message}")
    if exc.status == 404 and ("image" in lowered or "no such image" in lowered):
        return AgentError(IMAGE_NOT_FOUND, f"{doing}: image not found locally: {message}")
    if "network" in lowered or "endpoint" in lowered or "address pool" in lowered:
        return AgentError(NETWORK_ERROR, f"{doing}: {message}")
    if _resource_refusal(message):
        return AgentError(RESOURCE_LIMIT, f"{doing}: Docker refused the limits{_limit_field(lowered)}: {message}")
    return AgentError(CONTAINER_ERROR, f"{doing}: {message}")


class _DockerCall:
    """``with _DockerCall(doing, code):`` maps a failed Docker call to an ``AgentError``: an unreachable
    daemon is SOCKET_ERROR, an error answer is ``code`` with what was being done (or, with ``classify``,
    the code its message implies). ``absent_ok`` (404), ``tolerate`` (other statuses) and ``busy_ok``
    ("already in progress") end the block quietly instead: the code after the ``with`` says what that means.
    """

    def __init__(
        self,
        doing: str,
        code: str = CONTAINER_ERROR,
        *,
        absent_ok: bool = False,
        tolerate: tuple[int, ...] = (),
        busy_ok: bool = False,
        classify: bool = False,
    ) -> None:
        self.doing, self.code, self.classify = doing, code, classify
        self.quiet = ((404,) if absent_ok else ()) + tolerate
        self.busy_ok = busy_ok

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if isinstance(exc, _UNREACHABLE):
            raise _unreachable(exc) from exc
        if not isinstance(exc, aiodocker.DockerError):
            return False
        if exc.status == AIODOCKER_UNREACHABLE:
            raise AgentError(SOCKET_ERROR, f"cannot reach the Docker daemon: {exc.message}") from exc
        if exc.status in self.quiet or (self.busy_ok and "already in progress" in (exc.message or "")):
            return True
        if self.classify:
            raise _classify(exc, self.doing) from exc
        raise AgentError(self.code, f"{self.doing} failed: {exc.message}") from exc


_ALREADY = {True: "already paused", False: "is not paused"}


async def set_paused(docker: aiodocker.Docker, container_id: str, paused: bool) -> None:
    """Docker pause (``paused``) or unpause of a container on ``docker``'s daemon; one that already is
    as asked is no error (Docker's 409 "already paused" / "is not paused")."""
    doing = f"{'pausing' if paused else 'unpausing'} container {container_id[:12]}"
    container = docker.containers.container(container_id)
    with _DockerCall(doing, CONTAINER_ERROR):
        try:
            await (container.pause() if paused else container.unpause())
        except aiodocker.DockerError as exc:
            if exc.status != 409 or _ALREADY[paused] not in (exc.message or ""):
                raise


class DockerDriver:
    def __init__(self, settings: Settings, observer: DockerObserver | None = None) -> None:
        self.settings = settings
        self.observer: DockerObserver = observer or NoopDockerObserver()
        self._docker: aiodocker.Docker | None = None
        self._network_locks: dict[str, asyncio.Lock] = {}
        # Networks known to exist and be usable; cleared by network events, so a steady-state reconcile
        # makes no network calls at all.
        self._networks_seen: set[str] = set()
        self._images_seen: set[str] = set()
        self.slots = asyncio.Semaphore(settings.docker_concurrency)

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.docker_timeout_seconds, connect=5)
        self._docker = aiodocker.Docker(url=self.settings.docker_url, timeout=timeout)

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            raise AgentError(SOCKET_ERROR, "the Docker client is not open")
        return self._docker

    def _filters(self, **labels: str) -> str:
        wanted = [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.settings.instance}"]
        wanted += [f"{k}={v}" for k, v in labels.items()]
        return json.dumps({"label": wanted})

    @_timed
    async def ping(self) -> None:
        with _DockerCall("pinging the Docker daemon", SOCKET_ERROR):
            await self.docker.version()

    @_timed
    async def runtime_names(self, docker: aiodocker.Docker | None = None) -> frozenset[str]:
        """The OCI runtimes the daemon has (``docker info``'s Runtimes), asked through ``docker`` (the
        API's own client) or the driver's."""
        with _DockerCall("asking the Docker daemon for its runtimes", SOCKET_ERROR):
            info = await (docker or self.docker).system.info()
        return frozenset((info.get("Runtimes") or {}).keys())

    @_timed
    async def list_agent_names(self) -> list[Listed]:
        """The containers of this instance and their agents (one call, no inspects)."""
        with _DockerCall("listing containers", SOCKET_ERROR):
            found = await self.docker.containers.list(all=True, filters=self._filters())
        return [
            Listed(str(c["Id"]), str(c["Labels"][LABEL_AGENT])) for c in found if (c["Labels"] or {}).get(LABEL_AGENT)
        ]

    @_timed
    async def list_containers(self, agent: str | None = None) -> list[Instance]:
        """Containers of this controller instance (all states), optionally of one agent, inspected."""
        filters = self._filters(**({LABEL_AGENT: agent} if agent else {}))
        with _DockerCall("listing containers", SOCKET_ERROR):
            found = await self.docker.containers.list(all=True, filters=filters)
        infos = []
        for container in found:
            with _DockerCall("inspecting a listed container", SOCKET_ERROR, absent_ok=True):  # gone since: skip
                infos.append(instance_from_inspect(await container.show()))
        return infos

    @_timed
    async def inspect(self, container_id: str) -> Instance | None:
        with _DockerCall(f"inspecting {container_id[:12]}", CONTAINER_ERROR, absent_ok=True):
            return instance_from_inspect(await self.docker.containers.container(container_id).show())
        return None

    @_timed
    async def image_exists(self, image: str) -> bool:
        """Whether ``image`` is present locally. A yes is remembered until an image is deleted or untagged
        (``forget_images``, from the event stream), so a steady stream of new agents inspects it once."""
        if image in self._images_seen:
            return True
        with _DockerCall(f"inspecting image {image}", IMAGE_NOT_FOUND, absent_ok=True):
            await self.docker.images.inspect(image)
            self._images_seen.add(image)
            return True
        return False

    def forget_images(self) -> None:
        """Ask Docker again about every image (one was deleted or untagged, or creating from one failed)."""
        self._images_seen.clear()

    def forget_cached(self) -> None:
        """Forget every remembered network and image: after a gap in the event stream, nothing is known."""
        self._networks_seen.clear()
        self._images_seen.clear()

    @_timed
    async def ensure_network(self, name: str, *, internal: bool = False) -> bool:
        """Make sure a usable network ``name`` exists; True when this call created it (labelled ours).
        ``internal``: one with no route out (Docker drops what its containers send elsewhere).

        Docker does not make network names unique atomically, so creation is serialised per name here
        and duplicates that we made anyway (another controller racing us) are removed.
        """
        if name in self._networks_seen:
            return False
        lock = self._network_locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._dedupe_network(name)
            created = await self._ensure_network(name, internal)
            self._networks_seen.add(name)
            return created

    def knows_network(self, name: str) -> bool:
        return name in self._networks_seen

    def forget_network(self, name: str) -> None:
        """Check ``name`` with Docker again next time (it was destroyed, or joining it failed)."""
        self._networks_seen.discard(name)

    async def _dedupe_network(self, name: str) -> None:
        with _DockerCall(f"listing networks named {name!r}", NETWORK_ERROR):
            found = [n for n in await self.docker.networks.list(filters={"name": [name]}) if n.get("Name") == name]
        found.sort(key=lambda n: str(n.get("Created", "")))
        for extra in found[1:]:
            labels = extra.get("Labels") or {}
            if labels.get(LABEL_MANAGED) == "true" and not await self.network_in_use(extra["Id"]):
                await self.remove_network(extra["Id"])

    async def _ensure_network(self, name: str, internal: bool) -> bool:
        with _DockerCall(f"inspecting network {name!r}", NETWORK_ERROR, absent_ok=True):
            data = await (await self.docker.networks.get(name)).show()
            if data.get("Driver") != "bridge":
                raise AgentError(
                    NETWORK_ERROR,
                    f"network {name!r} exists with driver {data.get('Driver')!r}, which agents cannot join",
                )
            if internal and not data.get("Internal"):
                raise AgentError(
                    NETWORK_ERROR,
                    f"network {name!r} exists and is not internal: it cannot hold agents whose egress is restricted",
                )
            return False
        with _DockerCall(f"creating network {name!r}", NETWORK_ERROR, tolerate=(409,)):  # 409: made meanwhile
            await self.docker.networks.create(
                {
                    "Name": name,
                    "Driver": "bridge",
                    "Internal": internal,
                    "CheckDuplicate": True,
                    "Labels": {LABEL_MANAGED: "true", LABEL_INSTANCE: self.settings.instance},
                }
            )
            return True
        return False

    @_timed
    async def create_container(self, name: str, config: dict[str, Any]) -> str:
        with _DockerCall(f"creating container {name}", classify=True):
            container = await self.docker.containers.create(config, name=name)
        return str(container.id)

    @_timed
    async def start(self, container_id: str) -> None:
        with _DockerCall(f"starting container {container_id[:12]}", classify=True):
            await self.docker.containers.container(container_id).start()

    @_timed
    async def stop(self, container_id: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds`` (Docker's own stop does exactly this)."""
        timeout = aiohttp.ClientTimeout(total=grace_seconds + self.settings.docker_timeout_seconds)
        with _DockerCall(f"stopping {container_id[:12]}", CONTAINER_ERROR, tolerate=(304, 404)):
            await self.docker.containers.container(container_id).stop(t=grace_seconds, timeout=timeout)

    @_timed
    async def set_paused(self, container_id: str, paused: bool) -> None:
        await set_paused(self.docker, container_id, paused)

    @_timed
    async def remove(self, container_id: str) -> None:
        with _DockerCall(f"removing {container_id[:12]}", CONTAINER_ERROR, absent_ok=True, busy_ok=True):
            await self.docker.containers.container(container_id).delete(force=True, v=False)

    @_timed
    async def recent_output(self, container_id: str, lines: int) -> list[str]:
        """The last ``lines`` lines of a container's stdout and stderr."""
        return [
            line
            async for line in LiveDocker(self).logs(
                container_id, tail=str(lines), since=None, timestamps=False, follow=False
            )
        ]

    @_timed
    async def rename(self, container_id: str, name: str) -> None:
        with _DockerCall(f"renaming {container_id[:12]} to {name}", CONTAINER_ERROR):
            await self.docker.containers.container(container_id).rename(name)

    async def connect_network(self, container_id: str, network: str, aliases: list[str]) -> None:
        with _DockerCall(f"connecting {container_id[:12]} to {network!r}", NETWORK_ERROR):
            found = await self.docker.networks.get(network)
            await found.connect({"Container": container_id, "EndpointConfig": {"Aliases": aliases}})

    async def managed_networks(self) -> list[dict[str, Any]]:
        with _DockerCall("listing networks", NETWORK_ERROR):
            networks = await self.docker.networks.list(
                filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.settings.instance}"]}
            )
        return [dict(n) for n in networks]

    @_timed
    async def network_gateway(self, name: str) -> str:
        """The host's (bridge) address on network ``name``: where the egress gateway listens for it."""
        with _DockerCall(f"inspecting network {name!r}", NETWORK_ERROR):
            data = await (await self.docker.networks.get(name)).show()
        for pool in (data.get("IPAM") or {}).get("Config") or []:
            gateway = str(pool.get("Gateway") or "")
            if gateway and ":" not in gateway:
                return gateway
        raise AgentError(NETWORK_ERROR, f"network {name!r} has no IPv4 gateway address for the egress gateway")

    @_timed
    async def network_in_use(self, network_id: str) -> bool:
        """An endpoint is on it, or a container (of any state) is configured for it: a container created
        and not started yet is no endpoint of its network, and starting it once the network is gone fails."""
        with _DockerCall("inspecting network", NETWORK_ERROR, absent_ok=True):
            data = await (await self.docker.networks.get(network_id)).show()
            if data.get("Containers"):
                return True
            configured = await self.docker.containers.list(all=True, filters={"network": [str(data["Name"])]})
            return bool(configured)
        return False

    @_timed
    async def remove_network(self, network_id: str) -> None:
        with _DockerCall("removing network", NETWORK_ERROR, absent_ok=True):
            await (await self.docker.networks.get(network_id)).delete()

    @_timed
    async def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        """Create the named volume with ``labels``, in one call: Docker answers a create of an existing
        volume with that volume, unchanged. It is used only if it carries the same labels: a volume of
        someone else's is never mounted into an agent."""
        body = json.dumps({"Name": name, "Driver": "local", "Labels": labels}).encode()
        with _DockerCall(f"creating volume {name}", CONTAINER_ERROR):
            data = await self.docker._query_json("volumes/create", method="POST", data=body)
        found = (data or {}).get("Labels") or {}
        if any(found.get(key) != value for key, value in labels.items()):
            raise AgentError(
                CONTAINER_ERROR, f"volume {name} exists but is not this agent's (labels differ); remove it"
            )

    @_timed
    async def remove_volume(self, name: str, labels: dict[str, str]) -> None:
        """Remove the named volume if it carries ``labels``; a missing volume is fine."""
        with _DockerCall(f"removing volume {name}", CONTAINER_ERROR, absent_ok=True):
            volume = await self.docker.volumes.get(name)  # type: ignore[no-untyped-call]
            found = (await volume.show()).get("Labels") or {}
            if all(found.get(key) == value for key, value in labels.items()):
                await volume.delete()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """One connection to Docker's event stream; it ends when the connection does (no retry here).
        The first item is ``STREAM_OPEN`` once Docker has answered: from then on no change is missed, so
        a list made after it plus the events that follow are the whole truth."""
        params = {"filters": json.dumps({"type": ["container", "network", "image"]})}
        forever = aiohttp.ClientTimeout(total=None, sock_read=None, connect=5)
        try:
            with _DockerCall("opening the event stream", SOCKET_ERROR):
                async with self.docker._query("events", method="GET", params=params, timeout=forever) as response:
                    yield dict(STREAM_OPEN)
                    async for line in response.content:  # one JSON object per line
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        self.observer.on_docker_event(event)
                        yield event
        except json.JSONDecodeError as exc:
            raise AgentError(SOCKET_ERROR, f"event stream failed: {exc}") from exc


STREAM_OPEN = {"Type": "parallax", "Action": "stream-open"}


class DriverNetworks:
    """The network garbage-collection verbs of a ``Runtime`` whose engine calls go through a
    ``DockerDriver`` (the local runtime's, and the Swarm runtime's subclass of it)."""

    driver: DockerDriver

    async def managed_networks(self) -> list[ManagedNetwork]:
        return [ManagedNetwork(str(n["Id"]), str(n.get("Name", ""))) for n in await self.driver.managed_networks()]

    async def network_in_use(self, network_id: str) -> bool:
        return await self.driver.network_in_use(network_id)

    async def remove_network(self, network_id: str) -> None:
        await self.driver.remove_network(network_id)


LIVE_SPARE_CONNECTIONS = 16


class LiveDocker(ExecAndFiles):
    """Read-only and interactive views of a running container (logs, stats, stdin, exec, files): the API's direct
    Docker calls, which DESIGN allows because they create, start, stop and remove nothing.

    With ``own_client`` (the API's instance) they go through a Docker client of their own, whose pool
    holds ``max_streams + LIVE_SPARE_CONNECTIONS`` connections: followed logs can never take the
    connections the reconciler's calls need, and at most ``max_streams`` of them are admitted by the API
    (``api.server.streams``), so short live calls (stats, send, a log tail) always find one free. Without it (the
    driver's own log tail) they use the driver's client.
    """

    def __init__(self, driver: DockerDriver, *, own_client: bool = False) -> None:
        self.driver = driver
        self._own_client = own_client
        self._docker: aiodocker.Docker | None = None
        self._connector: aiohttp.UnixConnector | None = None

    async def open(self) -> None:
        if not self._own_client or self._docker is not None:
            return
        settings = self.driver.settings
        self._connector = aiohttp.UnixConnector(
            settings.docker_socket, limit=settings.max_streams + LIVE_SPARE_CONNECTIONS
        )
        timeout = aiohttp.ClientTimeout(total=settings.docker_timeout_seconds, connect=5)
        # with a connector of its own, the URL only names the host in request URLs
        self._docker = aiodocker.Docker(url="unix://localhost", connector=self._connector, timeout=timeout)

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
        if self._connector is not None:
            await self._connector.close()  # the client does not close a connector it was given
            self._connector = None

    @property
    def docker(self) -> aiodocker.Docker:
        if not self._own_client:
            return self.driver.docker
        if self._docker is None:
            raise AgentError(SOCKET_ERROR, "the live Docker client is not open")
        return self._docker

    async def logs(
        self, container_id: str, *, tail: str, since: int | None, timestamps: bool, follow: bool
    ) -> AsyncIterator[str]:
        """Whole lines of stdout and stderr, without Docker's 8-byte frame headers."""
        with _DockerCall("reading logs"):
            async with self.open_logs(
                container_id, tail=tail, since=since, timestamps=timestamps, follow=follow
            ) as lines:
                async for line in lines:
                    yield line

    @contextlib.asynccontextmanager
    async def open_logs(
        self, container_id: str, *, tail: str, since: int | None, timestamps: bool, follow: bool
    ) -> AsyncIterator[AsyncIterator[str]]:
        """``async with live.open_logs(...) as lines``: Docker has answered (an error is raised here, before
        anything is sent to a client); ``lines`` are whole lines of stdout and stderr, without Docker's
        8-byte frame headers. Leaving the block closes the Docker connection, read to its end or not
        (a follower whose client went, or one cancelled while the container is quiet)."""
        params = {
            "stdout": "1",
            "stderr": "1",
            "follow": "1" if follow else "0",
            "tail": tail,
            "timestamps": "1" if timestamps else "0",
        }
        if since is not None:
            params["since"] = str(since)
        total = None if follow else self.driver.settings.docker_timeout_seconds
        timeout = aiohttp.ClientTimeout(total=total, sock_read=None if follow else total, connect=5)
        with _DockerCall("reading logs"):
            response = await self.docker._do_query(
                self.logs_path(container_id), method="GET", params=params, timeout=timeout
            )
        lines = _log_lines(response)
        try:
            yield lines
        finally:
            await lines.aclose()
            response.close()  # never back to the pool half-read: the connection itself is closed

    def logs_path(self, container_id: str) -> str:
        """The Engine API path of an instance's logs (a Swarm service's are elsewhere)."""
        return f"containers/{container_id}/logs"

    async def stats(self, container_id: str) -> dict[str, Any]:
        """One stats sample (Docker's one-shot: no second sample, so no ~1 s wait)."""
        with _DockerCall("reading stats"):
            data = await self.docker._query_json(
                f"containers/{container_id}/stats", method="GET", params={"stream": "0", "one-shot": "1"}
            )
        return dict(data) if isinstance(data, dict) else {}

    async def write_stdin(self, container_id: str, data: bytes) -> None:
        """Write to the container's stdin through the attach stream (no shell, no quoting)."""
        with _DockerCall("attaching to stdin"):
            stream = self.docker.containers.container(container_id).attach(stdin=True)
            async with stream:
                await stream.write_in(data)


async def _log_lines(response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
    """Docker's multiplexed log stream as lines (stdout and stderr each kept whole)."""
    pending = {1: b"", 2: b""}
    while True:
        try:
            header = await response.content.readexactly(8)
            payload = await response.content.readexactly(int.from_bytes(header[4:8], "big"))
        except asyncio.IncompleteReadError:
            break
        stream = header[0] if header[0] in pending else 1
        *lines, pending[stream] = (pending[stream] + payload).split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    for rest in pending.values():
        if rest:
            yield rest.decode(errors="replace")
