"""Working inside a container through the Docker Engine API: exec (create, start hijacked, kill on
timeout or when its client goes) and the archive API (stat, read a tar, extract a tar).

Docker has no call that kills an exec's process. Every exec gets a marker in its environment
(``PARALLAX_EXEC_ID``); ending one runs a second, fixed exec as the same user that sends SIGKILL to every
process of the container whose environment carries that marker (the command and what it started). This
needs ``/bin/sh`` in the image (every agent image has one) and works the same on a remote swarm node,
where a host PID would mean nothing to us.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiodocker
import aiohttp

from controller.model.errors import CONTAINER_ERROR, SOCKET_ERROR, AgentError
from controller.runtime.interface import ExecCommand, PathStat, PathUnresolvable

log = logging.getLogger("parallax.exec")

EXEC_MARKER = "PARALLAX_EXEC_ID"
_KILL_TOKEN = "PARALLAX_EXEC_KILL"
_KILL_SCRIPT = (
    'for p in /proc/[0-9]*; do n="${p#/proc/}"; [ "$n" = "$$" ] && continue; '
    'if tr "\\000" "\\n" < "$p/environ" 2>/dev/null | grep -qx "' + EXEC_MARKER + "=$" + _KILL_TOKEN + '"; '
    'then kill -9 "$n" 2>/dev/null; fi; done; exit 0'
)
KILL_WAIT_SECONDS = 5.0
_UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError, asyncio.TimeoutError)


def _refused(doing: str, exc: BaseException) -> AgentError:
    if isinstance(exc, aiodocker.DockerError):
        if exc.status == 900:
            return AgentError(SOCKET_ERROR, f"cannot reach the Docker daemon: {exc.message}")
        return AgentError(CONTAINER_ERROR, f"{doing} failed: {exc.message}")
    if isinstance(exc, asyncio.TimeoutError):
        return AgentError(SOCKET_ERROR, f"{doing}: the Docker daemon did not answer in time")
    return AgentError(SOCKET_ERROR, f"{doing}: cannot reach the Docker daemon: {type(exc).__name__}")


class DockerExec:
    """One started exec: its multiplexed output as ``(1 | 2, bytes)``, its stdin, its terminal size, and
    ``kill``. The connection is the exec's own (hijacked), closed by ``close``."""

    def __init__(self, docker: aiodocker.Docker, container_id: str, exec_id: str, stream: Any, command: ExecCommand):
        self._docker = docker
        self._container_id = container_id
        self._exec = aiodocker.execs.Exec(docker, exec_id, tty=command.tty)
        self._stream = stream
        self._command = command
        self.marker = command_marker(command)
        self.killed = False
        self.ended = False
        """Docker reported the exit code: nothing is left to kill."""

    async def read(self) -> tuple[int, bytes] | None:
        """The next piece of output (``1`` stdout, ``2`` stderr; a terminal's is all ``1``), or None at
        the end (the process and everything holding its output closed)."""
        try:
            message = await self._stream.read_out()
        except _UNREACHABLE:
            return None
        if message is None:
            return None
        return (2 if message.stream == 2 else 1), bytes(message.data)

    async def write(self, data: bytes) -> None:
        await self._stream.write_in(data)

    async def close_stdin(self) -> None:
        """End of input: the process reads EOF (Docker closes its stdin when the attach half-closes)."""
        response = self._stream._resp
        transport = response.connection.transport if response is not None and response.connection else None
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    async def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(aiodocker.DockerError, *_UNREACHABLE):
            await self._exec.resize(h=rows, w=cols)

    async def _inspect(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = await self._exec.inspect()
        except (aiodocker.DockerError, *_UNREACHABLE):
            return None
        if not data.get("Running") and data.get("ExitCode") is not None:
            self.ended = True
        return data

    async def exit_code(self) -> int | None:
        """The exit code once the process ended; None while it runs (or when Docker cannot say)."""
        data = await self._inspect()
        if data is None or not self.ended:
            return None
        return int(data["ExitCode"])

    async def running(self) -> bool:
        """Whether the process may still run: started and not ended, or not yet started. Docker answers
        the start of an exec (the hijacked connection) before its process exists (inspect says
        ``Running: true`` with ``Pid: 0`` until it does); only an exit code means it is over."""
        data = await self._inspect()
        return data is not None and not self.ended

    async def kill(self) -> bool:
        """SIGKILL the command and every process it started (found by the marker in their environment);
        True once Docker reports the exec ended. A process not started yet (no ``Pid``) is waited for:
        the marker is in no process's environment before then. The kill is sent again while it runs."""
        self.killed = True
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        sent_at: float | None = None
        while time.monotonic() < deadline:
            data = await self._inspect()
            if self.ended:
                return True
            if data is not None and data.get("Pid") and (sent_at is None or time.monotonic() - sent_at > 0.5):
                sent_at = time.monotonic()
                await self._send_kill()
            await asyncio.sleep(0.05)
        return False

    async def _send_kill(self) -> None:
        try:
            killer = await self._docker.containers.container(self._container_id).exec(
                ["/bin/sh", "-c", _KILL_SCRIPT],
                stdout=False,
                stderr=False,
                user=self._command.user or "",
                environment={_KILL_TOKEN: self.marker},
            )
            await killer.start(detach=True)
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            log.warning("could not kill exec %s in %s: %s", self._exec.id[:12], self._container_id[:12], exc)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stream.close()


def command_marker(command: ExecCommand) -> str:
    return command.env.get(EXEC_MARKER, "")


class ExecAndFiles:
    """The exec and archive verbs of ``LiveDocker`` (and so of a swarm node's live views)."""

    @property
    def docker(self) -> aiodocker.Docker:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def open_exec(self, container_id: str, command: ExecCommand) -> AsyncIterator[DockerExec]:
        """``async with live.open_exec(id, command) as process``: the command runs (Docker refused it:
        raised here). Leaving the block kills it if it still runs, and closes its connection."""
        env = {**command.env, EXEC_MARKER: secrets.token_hex(16)}
        command = ExecCommand(command.argv, env, command.workdir, command.user, command.tty, command.stdin)
        doing = f"running a command in {container_id[:12]}"
        try:
            created = await self.docker.containers.container(container_id).exec(
                list(command.argv),
                stdout=True,
                stderr=True,
                stdin=command.stdin,
                tty=command.tty,
                user=command.user or "",
                environment=env,
                workdir=command.workdir or None,
            )
            stream = created.start(detach=False)
            await stream._init()
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            raise _refused(doing, exc) from exc
        process = DockerExec(self.docker, container_id, created.id, stream, command)
        try:
            yield process
        finally:
            try:
                if not process.ended and await process.running():
                    await asyncio.shield(process.kill())
            finally:
                await process.close()

    async def stat_path(self, container_id: str, path: str) -> PathStat | None:
        """What Docker's archive HEAD says of ``path`` (the last component not followed), None when absent."""
        docker = self.docker
        try:
            await docker._check_version()
            url = docker._canonicalize_url(f"containers/{container_id}/archive")
            async with docker.session.head(url, params={"path": path}) as response:
                header = response.headers.get("X-Docker-Container-Path-Stat", "")
                status = response.status
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            raise _refused(f"reading {path[:80]}", exc) from exc
        if status == 404 and not header:
            return None
        if status == 500:  # Docker's answer to a path it cannot resolve (a symlink loop, too many links)
            raise PathUnresolvable(f"{path[:80]} cannot be resolved (a symlink loop?)")
        if status >= 400:
            raise AgentError(CONTAINER_ERROR, f"reading {path[:80]} failed: Docker answered {status}")
        try:
            data = json.loads(base64.b64decode(header)) if header else {}
        except ValueError:
            data = {}
        return PathStat(
            name=str(data.get("name", "")),
            size=int(data.get("size") or 0),
            mode=int(data.get("mode") or 0),
            mtime=str(data.get("mtime", "")),
            link_target=str(data.get("linkTarget") or ""),
        )

    @contextlib.asynccontextmanager
    async def open_archive(self, container_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """``path`` as a tar stream (Docker answered before the block begins); the connection closes
        when the block is left, read to its end or not."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, connect=5)
        try:
            response = await self.docker._do_query(
                f"containers/{container_id}/archive", method="GET", params={"path": path}, timeout=timeout
            )
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            raise _refused(f"reading {path[:80]}", exc) from exc

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in response.content.iter_chunked(256 * 1024):
                yield chunk

        try:
            yield chunks()
        finally:
            response.close()

    async def file_owner(self, container_id: str) -> tuple[int, int]:
        """The numeric user and group the container runs as (``User`` ``uid[:gid]``; a name, or none,
        is root's 0:0 as far as owners in a tar go)."""
        try:
            data = await self.docker.containers.container(container_id).show()
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            raise _refused(f"inspecting {container_id[:12]}", exc) from exc
        user, _, group = str((data.get("Config") or {}).get("User") or "").partition(":")
        uid = int(user) if user.isdigit() else 0
        return uid, int(group) if group.isdigit() else uid

    async def put_archive(self, container_id: str, directory: str, body: AsyncIterable[bytes]) -> None:
        """Extract the tar ``body`` into ``directory`` (members keep the owners their headers carry); a
        directory is never replaced by a file."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, connect=5)
        params = {"path": directory, "noOverwriteDirNonDir": "1"}
        try:
            async with self.docker._query(
                f"containers/{container_id}/archive",
                method="PUT",
                params=params,
                data=body,
                headers={"Content-Type": "application/x-tar"},
                timeout=timeout,
            ):
                pass
        except (aiodocker.DockerError, *_UNREACHABLE) as exc:
            raise _refused(f"writing into {directory[:80]}", exc) from exc
