"""Clients of the swarm nodes' own Docker daemons, and what the runtime learns only from a node.

The manager's API says where a task runs, not what its container did or how its daemon is configured.
A node's endpoint (``PARALLAX_SWARM_NODES``, or the node label ``parallax.endpoint``) answers those: the
live views use it for stats, stdin, exec and files, the runtime for whether a task's container was
OOM-killed and whether the node's daemon gives task processes no-new-privileges. Each user holds a
``NodeClients`` of its own, so the API's live views never share a connection with the reconciler's calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from typing import Any

import aiodocker
import aiohttp

from controller.config import Settings
from controller.model.errors import CONTAINER_ERROR, AgentError

log = logging.getLogger("parallax.runtime.swarm")

LABEL_ENDPOINT = "parallax.endpoint"


def _client(url: str, timeout: aiohttp.ClientTimeout) -> aiodocker.Docker:
    """A client of a node's daemon: ``unix://`` as it is, ``tcp://`` with TLS from ``DOCKER_CERT_PATH``
    (ca.pem, cert.pem, key.pem, as the docker CLI reads them) when that is set."""
    cert_path = os.environ.get("DOCKER_CERT_PATH")
    if url.startswith("tcp://") and cert_path:
        context = ssl.create_default_context(cafile=os.path.join(cert_path, "ca.pem"))
        context.load_cert_chain(os.path.join(cert_path, "cert.pem"), os.path.join(cert_path, "key.pem"))
        return aiodocker.Docker(url="https://" + url.removeprefix("tcp://"), ssl_context=context, timeout=timeout)
    return aiodocker.Docker(url=url, timeout=timeout)


def hostname(node: dict[str, Any]) -> str:
    return str((node.get("Description") or {}).get("Hostname", node.get("ID", "")))


class NodeClients:
    """One client per node endpoint, made when first needed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, aiodocker.Docker] = {}

    def endpoint(self, node: dict[str, Any]) -> str | None:
        host = hostname(node)
        configured = dict(self.settings.swarm_nodes)
        if host in configured:
            return configured[host]
        label = ((node.get("Spec") or {}).get("Labels") or {}).get(LABEL_ENDPOINT)
        return str(label) if label else None

    def client(self, node: dict[str, Any]) -> aiodocker.Docker:
        """The node's client; a node without an endpoint is a clear error naming it."""
        host = hostname(node)
        url = self.endpoint(node)
        if url is None:
            raise AgentError(
                CONTAINER_ERROR,
                f"the agent runs on swarm node {host}, and no Docker endpoint is configured for it "
                f"(PARALLAX_SWARM_NODES={host}=unix:///… or tcp://…, or the node label {LABEL_ENDPOINT})",
            )
        if url not in self._clients:
            timeout = aiohttp.ClientTimeout(total=self.settings.docker_timeout_seconds, connect=5)
            self._clients[url] = _client(url, timeout)
        return self._clients[url]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


class NodeFacts:
    """The runtime's questions to the nodes, answered once per task or node and remembered."""

    def __init__(self, settings: Settings) -> None:
        self.clients = NodeClients(settings)
        self._oom: dict[str, bool] = {}
        self.no_new_privileges: dict[str, bool] = {}
        """By node hostname: whether its daemon gives task processes no-new-privileges (as seen in a
        running task container's ``/proc/1/status``); a node not asked yet is absent."""

    async def close(self) -> None:
        await self.clients.close()

    async def oom_killed(self, task_id: str, node: dict[str, Any], container_id: str) -> bool:
        """Whether the ended task's container was OOM-killed: its node's ``State.OOMKilled``. Unknown
        (no endpoint, the container reaped, the node down) is False, as the manager alone would say."""
        if task_id in self._oom:
            return self._oom[task_id]
        if self.clients.endpoint(node) is None:
            return False
        found = False
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError, AgentError):
            container = await self.clients.client(node).containers.get(container_id)
            found = bool((container._container.get("State") or {}).get("OOMKilled"))
            self._oom[task_id] = found
        return found

    def forget_tasks(self, keep: set[str]) -> None:
        for task_id in set(self._oom) - keep:
            del self._oom[task_id]

    async def probe_no_new_privileges(self, node: dict[str, Any], container_id: str) -> bool | None:
        """Read ``NoNewPrivs`` of the task container's first process on its node (an exec of ``cat``,
        which every agent image has); None when it cannot be told."""
        host = hostname(node)
        if host in self.no_new_privileges:
            return self.no_new_privileges[host]
        if self.clients.endpoint(node) is None:
            return None
        text = ""
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError, AgentError):
            container = await self.clients.client(node).containers.get(container_id)
            execution = await container.exec(["cat", "/proc/1/status"], stdout=True, stderr=False)
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    text += message.data.decode(errors="replace")
        value = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("NoNewPrivs:")), None
        )
        if value is None:
            return None
        self.no_new_privileges[host] = value == "1"
        if value != "1":
            log.warning(
                'swarm node %s gives task processes no no-new-privileges: set {"no-new-privileges": true} in '
                "its daemon.json (a service spec cannot say it; see README, Swarm runtime)",
                host,
            )
        return self.no_new_privileges[host]

    def forget_node(self, host: str) -> None:
        """The node's daemon may have restarted with another configuration: ask again."""
        self.no_new_privileges.pop(host, None)
