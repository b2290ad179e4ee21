"""A unix-socket proxy in front of the real Docker daemon that hangs chosen requests: fault injection
for "one Docker call never answers", with everything else served by the real daemon."""

from __future__ import annotations

import asyncio
import contextlib


class HangingDockerProxy:
    def __init__(self, listen_path: str, docker_path: str, marker: bytes) -> None:
        self.listen_path = listen_path
        self.docker_path = docker_path
        self.marker = marker
        self.hung = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.listen_path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        docker_reader, docker_writer = await asyncio.open_unix_connection(self.docker_path)

        async def upstream() -> None:
            while chunk := await client_reader.read(65536):
                if self.marker in chunk:
                    self.hung += 1
                    await asyncio.Event().wait()  # never answer this connection
                docker_writer.write(chunk)
                await docker_writer.drain()
            docker_writer.close()

        async def downstream() -> None:
            while chunk := await docker_reader.read(65536):
                client_writer.write(chunk)
                await client_writer.drain()
            client_writer.close()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                client_writer.close()
                docker_writer.close()
