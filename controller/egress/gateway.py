"""The egress gateway: a forward proxy in the controller, listening on each internal network's bridge.

An agent whose egress is restricted sits on an internal network (Docker forwards nothing from it), with
``HTTP_PROXY``/``HTTPS_PROXY`` pointing here. For each connection the gateway finds the agent by its
source address (the network's endpoints, refreshed on a miss and on Docker's network events), reads the
agent's policy from the store (so a changed policy holds from the next connection on, without a restart),
and forwards an absolute-form HTTP request or a ``CONNECT`` tunnel to an allowed host and port, or answers
403 and reports the denial. The destination is chosen once per connection from the request line: every
byte the agent sends afterwards goes there and nowhere else, so nothing inside a tunnel or a second
request on the connection can redirect it. Names are resolved only once allowed (``PARALLAX_EGRESS_HOSTS``
first, then the host's resolver), so a denied name never reaches a DNS server.

Why a part of the controller rather than a gateway container: nothing can be pulled here, the controller
already holds the store (the policy) and the Docker connection (who is who), and a container would need
a route out of the internal network that agents must not share. The cost: the controller process must
have an address on every internal network (it runs on the Docker host, or in the host's network
namespace), and egress stops while the controller does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiodocker

from controller.config import Settings
from controller.egress.policy import address_literal, effective, normalise_host
from controller.model.agent import Agent
from controller.store.interface import Store, StoreError
from controller.store.rules import NotFound
from controller.tasks import cancel_all

log = logging.getLogger("parallax.egress")

HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
REFRESH_INTERVAL_SECONDS = 0.2
CONNECTIONS_PER_SOURCE = 256
"""Open connections one source address may hold: an agent cannot exhaust the controller's descriptors."""
HOP_HEADERS = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}

AgentLookup = Callable[[str], Awaitable[Agent | None]]
DenialSink = Callable[[Agent | None, str, str], Awaitable[None]]
"""Told of each refusal: the agent (None: an unknown source), ``host:port`` and a reason label."""


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Members:
    """Who is on one internal network: address -> (container id, agent name), and agent -> address."""

    by_address: dict[str, tuple[str, str]] = field(default_factory=dict)
    by_agent: dict[str, str] = field(default_factory=dict)
    read_at: float = 0.0


@dataclass
class _Listener:
    address: str
    server: asyncio.Server
    members: _Members = field(default_factory=_Members)
    refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    connect: bool
    head: bytes = b""
    """For a plain HTTP request: the request head to send upstream (origin-form, one request)."""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_head(head: bytes) -> Target:
    """The destination of a proxy request head (CONNECT or absolute-form), or ``Refused``."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes any byte
        raise Refused(400, "unreadable request") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "not an HTTP/1.x proxy request")
    method, target, version = parts
    if method.upper() == "CONNECT":
        host, port = _authority(target, None)
        return Target(host, port, connect=True)
    url = urllib.parse.urlsplit(target)
    if url.scheme.lower() != "http" or not url.netloc:
        raise Refused(400, "the gateway forwards absolute http:// requests and CONNECT tunnels only")
    if "@" in url.netloc:
        raise Refused(400, "credentials in the request URL are not forwarded")
    host, port = _authority(url.netloc, 80)
    path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
    headers = [line for line in lines[1:] if line and line.split(":", 1)[0].strip().lower() not in HOP_HEADERS]
    headers = [line for line in headers if line.split(":", 1)[0].strip().lower() != "host"]
    authority = url.netloc
    upstream = "\r\n".join([f"{method} {path} {version}", f"Host: {authority}", *headers, "Connection: close"])
    return Target(host, port, connect=False, head=(upstream + "\r\n\r\n").encode("latin-1"))


def _authority(text: str, default_port: int | None) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
        rest = f":{port_text}" if port_text else ""
    if rest:
        port_text = rest[1:]
        if not rest.startswith(":") or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise Refused(400, f"bad port in {text!r}")
        port = int(port_text)
    elif default_port is None:
        raise Refused(400, f"CONNECT needs host:port, not {text!r}")
    else:
        port = default_port
    host = normalise_host(host)
    if not host:
        raise Refused(400, f"no host in {text!r}")
    return host, port


class EgressGateway:
    """The forward proxy of every internal network of this controller (``serve`` one per network)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.agents: AgentLookup | None = None
        self.on_denied: DenialSink | None = None
        self._hosts = dict(settings.egress_hosts)
        self._listeners: dict[str, _Listener] = {}
        self._serving = asyncio.Lock()
        self._docker: aiodocker.Docker | None = None
        self._agents_of: dict[str, str | None] = {}
        """container id -> agent name (None: not one of this controller's agents)."""
        self._tunnels: set[asyncio.Task[None]] = set()
        self._per_source: dict[str, int] = {}

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.settings.docker_url)
        return self._docker

    def address(self, network: str) -> str | None:
        listener = self._listeners.get(network)
        return listener.address if listener else None

    async def serve(self, network: str, address: str) -> None:
        """Listen on ``address`` (the network's bridge address) for ``network``'s agents; idempotent."""
        async with self._serving:
            current = self._listeners.get(network)
            if current is not None and current.address == address:
                return
            if current is not None:
                current.server.close()
            server = await asyncio.start_server(
                lambda r, w: self._connection(network, r, w),
                host=address,
                port=self.settings.egress_port,
                reuse_address=True,
                # several controllers of one store on one Docker host (a leader and its standby, or a
                # leader that lost the lease and has not noticed) each serve the agents' networks: the
                # kernel shares the connections, and any of them answers from the store
                reuse_port=True,
                limit=HEAD_LIMIT,
            )
            self._listeners[network] = _Listener(address, server)
            log.info("egress gateway for network %s listening on %s:%d", network, address, self.settings.egress_port)

    def network_changed(self, network: str) -> None:
        """Someone joined or left ``network``: read its endpoints again at the next connection."""
        listener = self._listeners.get(network)
        if listener is not None:
            listener.members.read_at = 0.0

    def stop_serving(self, network: str) -> None:
        """``network`` is gone: its address may go to another network (``serve`` listens again)."""
        listener = self._listeners.pop(network, None)
        if listener is not None:
            listener.server.close()

    async def close(self) -> None:
        for network in list(self._listeners):
            self.stop_serving(network)
        await cancel_all(list(self._tunnels))
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    # -- one connection -------------------------------------------------------------------------------

    async def _connection(self, network: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tunnels.add(task)
        upstream: asyncio.StreamWriter | None = None
        peer = str((writer.get_extra_info("peername") or ("", 0))[0])
        self._per_source[peer] = self._per_source.get(peer, 0) + 1
        try:
            if self._per_source[peer] > CONNECTIONS_PER_SOURCE:
                return
            agent = await self._agent_at(network, peer)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SECONDS)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            try:
                target = parse_head(head)
                if agent is None:
                    await self._denied(None, "?", "unknown-source")
                    raise Refused(403, f"{peer} is not an agent of this controller")
                address = await self._destination(network, agent, target)
                up_reader, upstream = await self._open(address, target)
            except Refused as refused:
                body = f"{refused}\n".encode()
                writer.write(
                    f"HTTP/1.1 {refused.status} {'Forbidden' if refused.status == 403 else 'Refused'}\r\n"
                    f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                return
            if target.connect:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                upstream.write(target.head)
            await _pipe_both(reader, writer, up_reader, upstream)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            return  # the gateway is closing; this task is asyncio's own (start_server), nobody awaits it
        finally:
            if upstream is not None:
                upstream.close()
            writer.close()
            self._per_source[peer] -= 1
            if not self._per_source[peer]:
                del self._per_source[peer]
            if task is not None:
                self._tunnels.discard(task)

    async def _destination(self, network: str, agent: Agent, target: Target) -> str:
        """The address to connect to for ``target``, or ``Refused`` (reported) when the policy says no."""
        listener = self._listeners.get(network)
        peer = listener.members.by_agent.get(target.host) if listener is not None else None
        if peer is not None:
            return peer  # another agent of this network, by name: as reachable as it is directly
        policy = effective(agent.spec.egress, agent.spec.type, self.settings.egress_policy_default)
        if not policy.allows(target.host, target.port):
            await self._denied(agent, target.authority, "not-allowed")
            raise Refused(403, f"egress to {target.authority} is not allowed by agent {agent.name}'s policy")
        literal = address_literal(target.host)
        if literal is not None:
            return str(literal)
        if target.host in self._hosts:
            return self._hosts[target.host]
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise Refused(502, f"{target.host} does not resolve: {exc}") from exc
        if not found:
            raise Refused(502, f"{target.host} does not resolve")
        address = str(found[0][4][0])
        if _host_local(address):
            # an allowed name whose DNS points at the controller's own host (rebinding) reaches nothing
            await self._denied(agent, target.authority, "host-local")
            raise Refused(403, f"{target.host} resolves to {address}, an address of the gateway's own host")
        return address

    async def _open(self, address: str, target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(address, target.port), CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as exc:
            raise Refused(502, f"cannot connect to {target.authority}: {exc or 'timed out'}") from exc

    async def _denied(self, agent: Agent | None, authority: str, reason: str) -> None:
        if self.on_denied is not None:
            with contextlib.suppress(Exception):
                await self.on_denied(agent, authority, reason)

    # -- who is who -----------------------------------------------------------------------------------

    async def _agent_at(self, network: str, peer: str) -> Agent | None:
        """The agent whose container has address ``peer`` on ``network`` now, with its current record."""
        listener = self._listeners.get(network)
        if listener is None or self.agents is None:
            return None
        for attempt in range(2):
            found = listener.members.by_address.get(peer)
            if found is not None:
                container_id, name = found
                agent = await self.agents(name)
                # the record names the container it runs: an address reused by another container since
                # the last read is noticed here (and read again), never credited to the old owner
                if agent is not None and agent.status.get("containerId") in (container_id, None):
                    return agent
            if attempt == 0:
                await self._refresh(network, listener)
        return None

    async def _refresh(self, network: str, listener: _Listener) -> None:
        async with listener.refreshing:
            if time.monotonic() - listener.members.read_at < REFRESH_INTERVAL_SECONDS:
                return  # another connection has just read it
            try:
                data = await (await self.docker.networks.get(network)).show()
            except (aiodocker.DockerError, OSError) as exc:
                log.warning("egress gateway: cannot read network %s: %s", network, exc)
                return
            members = _Members(read_at=time.monotonic())
            for container_id, endpoint in (data.get("Containers") or {}).items():
                name = await self._agent_of(container_id)
                address = str(endpoint.get("IPv4Address") or "").partition("/")[0]
                if name is None or not address:
                    continue
                with contextlib.suppress(ValueError):
                    ipaddress.ip_address(address)
                    members.by_address[address] = (container_id, name)
                    members.by_agent[name] = address
            listener.members = members

    async def _agent_of(self, container_id: str) -> str | None:
        if container_id in self._agents_of:
            return self._agents_of[container_id]
        try:
            data = await self.docker.containers.container(container_id).show()
        except (aiodocker.DockerError, OSError):
            return None
        labels = (data.get("Config") or {}).get("Labels") or {}
        mine = labels.get("parallax.managed") == "true" and labels.get("parallax.instance") == self.settings.instance
        name = labels.get("parallax.agent") if mine else None
        if len(self._agents_of) > 100_000:
            self._agents_of.clear()
        self._agents_of[container_id] = name
        return name


def _host_local(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    return parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
) -> None:
    """Bytes both ways until both sides have finished (or either fails)."""
    tasks = [asyncio.create_task(_pipe(reader, upstream)), asyncio.create_task(_pipe(up_reader, writer))]
    try:
        await asyncio.gather(*tasks)
    finally:
        await cancel_all(tasks)


def store_lookup(store: Store) -> AgentLookup:
    """The gateway's view of the records: an agent's current record, None once it has none."""

    async def lookup(name: str) -> Agent | None:
        try:
            return await store.get(name)
        except (NotFound, StoreError):
            return None

    return lookup
