"""``GET|PUT|DELETE /agents/{name}/files?path=/workspace/...``: an agent's workspace files, streamed.

Every path is resolved component by component through the engine's stat (Docker's archive HEAD),
following the symlinks the agent may have planted, and is refused unless the real path lies in the
workspace (``controller.model.agent_files``). Downloads and tar uploads are streamed; an upload's members are
checked as they pass (``UploadGuard``), before the engine extracts them. Reads work on a stopped
agent's container too (local Docker); writes and deletes need it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.server import openapi
from api.server.activity import note_activity
from api.server.errors import ApiError
from api.server.routes_exec import ExecsBusy, exec_slots, running_instance
from api.server.routes_exec import exec_code as exit_code
from api.server.routes_live import running_container
from api.server.state import LIVE, SETTINGS, STORE
from controller.model.agent_files import (
    END_OF_ARCHIVE,
    FILE_ROOTS,
    Member,
    PathRefused,
    TarReader,
    TarRefused,
    UploadGuard,
    components,
    confined,
    directory_header,
    file_header,
    kind_of,
    on_tmpfs,
    padding,
    permission_bits,
    requested_path,
    stat_line_mode,
)
from controller.model.errors import AgentError
from controller.runtime.interface import ExecCommand, Instance, LiveViews, PathStat, PathUnresolvable

routes = web.RouteTableDef()

MAX_SYMLINK_HOPS = 40
CHUNK_BYTES = 256 * 1024
PATH = openapi.query("path", {"type": "string"}, "an absolute path under /workspace")


def _path(request: web.Request) -> str:
    try:
        return requested_path(request.query.get("path"))
    except PathRefused as exc:
        raise _refusal(exc) from None


def _refusal(exc: PathRefused) -> ApiError:
    code = {400: "BAD_REQUEST", 403: "FORBIDDEN", 404: "NOT_FOUND"}.get(exc.status, "VALIDATION_FAILED")
    return ApiError(exc.status, code, str(exc), [{"field": "path", "message": str(exc)}])


@dataclass(frozen=True)
class Found:
    """A resolved path: its real path, its stat (None: the last component does not exist), and how it
    is reached: through Docker's archive API (the workspace volume) or, on a tmpfs, by commands run as
    the agent's user (which needs it running)."""

    real: str
    stat: PathStat | None
    by_exec: bool = False


async def resolve(live: LiveViews, instance: Instance, path: str, *, follow_last: bool = True) -> Found:
    """``path`` resolved, every symlink on the way followed and checked to stay in the writable mounts;
    404 when a directory on the way is missing, 403 when a symlink leads out."""
    if on_tmpfs(path):
        return await _resolve_by_exec(live, instance, path, follow_last=follow_last)
    steps = components(path)
    current, rest = steps[0], [posixpath.basename(s) for s in steps[1:]]
    hops = 0
    while True:
        try:
            stat = await live.stat_path(instance.id, current)
        except PathUnresolvable as exc:
            raise ApiError(
                400, "BAD_REQUEST", f"{path[:200]}: {exc}", [{"field": "path", "message": str(exc)}]
            ) from None
        if stat is None:
            if rest:
                raise ApiError(404, "NOT_FOUND", f"{path[:200]}: {current[:200]} does not exist")
            return Found(current, None)
        if kind_of(stat.mode) == "symlink" and (rest or follow_last):
            hops += 1
            if hops > MAX_SYMLINK_HOPS or not stat.link_target:
                raise ApiError(400, "BAD_REQUEST", f"{path[:200]}: too many symlinks")
            try:
                current = confined(posixpath.normpath(stat.link_target))
            except PathRefused as exc:
                raise _refusal(
                    PathRefused(f"{path[:200]} leads through the symlink {current[:200]}: {exc}", 403)
                ) from None
            if on_tmpfs(current):  # the archive API cannot see a tmpfs: go on from inside
                return await _resolve_by_exec(live, instance, posixpath.join(current, *rest), follow_last=follow_last)
            continue
        if not rest:
            return Found(current, stat)
        if kind_of(stat.mode) != "directory":
            raise ApiError(404, "NOT_FOUND", f"{path[:200]}: {current[:200]} is not a directory")
        current = posixpath.join(current, rest.pop(0))


def _needs_running(instance: Instance, path: str) -> None:
    if instance.state != "running":
        raise ApiError(
            409,
            "NOT_RUNNING",
            f"{path[:200]} is on a tmpfs, which exists only while the agent runs (container {instance.state})",
        )


async def _resolve_by_exec(live: LiveViews, instance: Instance, path: str, *, follow_last: bool) -> Found:
    _needs_running(instance, path)
    target = path if follow_last else posixpath.dirname(path)
    code, out, _ = await run_command(live, instance.id, ("readlink", "-f", "--", target))
    if code != 0 or not out.strip():
        raise ApiError(404, "NOT_FOUND", f"{path[:200]}: a directory on the way does not exist")
    real = out.decode("utf-8", "surrogateescape").rstrip("\n")
    if not follow_last:
        real = posixpath.join(real, posixpath.basename(path))
    try:
        real = confined(real)
    except PathRefused as exc:
        raise _refusal(PathRefused(f"{path[:200]} leads out through a symlink: {exc}", 403)) from None
    code, out, _ = await run_command(live, instance.id, ("stat", "-c", "%f %s %Y", "--", real))
    if code != 0:
        return Found(real, None, by_exec=True)
    raw_mode, size, mtime = out.decode().split()
    return Found(real, PathStat(posixpath.basename(real), int(size), stat_line_mode(raw_mode), mtime), by_exec=True)


async def run_command(
    live: LiveViews, instance: str, argv: tuple[str, ...], stdin: AsyncIterable[bytes] | None = None
) -> tuple[int | None, bytes, bytes]:
    """Run ``argv`` as the agent's user (``stdin`` streamed in); its exit code and (up to 64 KiB of) its
    stdout and stderr."""
    outputs = {1: bytearray(), 2: bytearray()}
    async with live.open_exec(instance, ExecCommand(argv, {}, stdin=stdin is not None)) as process:

        async def feed() -> None:
            assert stdin is not None
            try:
                async for chunk in stdin:
                    await process.write(chunk)
            except Exception:
                await process.kill()  # a refused upload: the command gets no more of it
                raise
            await process.close_stdin()

        feeder = asyncio.create_task(feed()) if stdin is not None else None
        try:
            while (piece := await process.read()) is not None:
                kept = outputs[piece[0]]
                kept += piece[1][: max(0, 65536 - len(kept))]
            if feeder is not None:
                await feeder
        finally:
            if feeder is not None:
                feeder.cancel()
        code = await exit_code(process)
    return code, bytes(outputs[1]), bytes(outputs[2])


@contextlib.asynccontextmanager
async def open_tar(live: LiveViews, instance: Instance, found: Found) -> AsyncIterator[AsyncIterator[bytes]]:
    """``found`` as a tar stream whose top entry is its base name (as Docker's archive API makes it)."""
    if not found.by_exec:
        async with live.open_archive(instance.id, found.real) as chunks:
            yield chunks
        return
    parent, base = posixpath.split(found.real)
    argv = ("tar", "-c", "-f", "-", "-C", parent or "/", base)
    async with live.open_exec(instance.id, ExecCommand(argv, {})) as process:

        async def output() -> AsyncIterator[bytes]:
            while (piece := await process.read()) is not None:
                if piece[0] == 1:
                    yield piece[1]

        yield output()


async def put_tar(live: LiveViews, instance: Instance, directory: Found, body: AsyncIterable[bytes]) -> None:
    if not directory.by_exec:
        await live.put_archive(instance.id, directory.real, body)
        return
    code, _, errors = await run_command(live, instance.id, ("tar", "-x", "-f", "-", "-C", directory.real), body)
    if code != 0:
        text = errors.decode(errors="replace").strip()[:500]
        raise ApiError(403, "FORBIDDEN", f"writing into {directory.real[:200]} failed: {text}")


async def _existing_instance(request: web.Request, name: str) -> Instance:
    agent = await request.app[STORE].get(name)
    await note_activity(request.app, name)
    return await running_container(request, agent)


def _entry(member: Member) -> dict[str, Any]:
    return {
        "name": member.name.rstrip("/").rsplit("/", 1)[-1],
        "type": member.kind,
        "size": member.size,
        "mode": f"{member.mode & 0o7777:04o}",
        "mtime": datetime.fromtimestamp(member.mtime, UTC).isoformat().replace("+00:00", "Z"),
        **({"linkTarget": member.link} if member.kind in ("symlink", "hardlink") else {}),
    }


FILE_ENTRY = {
    "type": "object",
    "required": ["name", "type", "size", "mode", "mtime"],
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": ["file", "directory", "symlink", "hardlink", "other"]},
        "size": {"type": "integer"},
        "mode": {"type": "string", "description": "permission bits, octal"},
        "mtime": {"type": "string", "format": "date-time"},
        "linkTarget": {"type": "string"},
    },
}


@routes.get("/agents/{name}/files")
@openapi.describe(
    "A workspace file's bytes, a directory's listing, or (archive=tar) a directory as a tar stream",
    parameters=[openapi.NAME, PATH, openapi.query("archive", {"enum": ["tar"]}, "a directory as a tar stream")],
    responses={
        "200": {
            "description": "the file, the listing, or the tar",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": openapi.ref("FileListing")},
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **openapi.errors(400, 401, 403, 404, 409, 422, 502, 503),
    },
    schemas={
        "FileEntry": FILE_ENTRY,
        "FileListing": {
            "type": "object",
            "required": ["path", "items"],
            "properties": {"path": {"type": "string"}, "items": {"type": "array", "items": openapi.ref("FileEntry")}},
        },
    },
)
async def get_files(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = _path(request)
    archive = request.query.get("archive")
    if archive not in (None, "", "tar"):
        raise ApiError(400, "BAD_REQUEST", "archive must be tar", [{"field": "archive", "message": "must be tar"}])
    info = await _existing_instance(request, name)
    live = request.app[LIVE]
    found = await resolve(live, info, path)
    stat = found.stat
    if stat is None:
        raise ApiError(404, "NOT_FOUND", f"{path[:200]} does not exist")
    kind = kind_of(stat.mode)
    if kind == "other":
        raise _refusal(PathRefused(f"{path[:200]} is a device, fifo or socket; only files and directories are served"))
    if archive == "tar":
        return await _send_tar(request, live, info, found)
    if kind == "directory":
        return web.json_response({"path": found.real, "items": await _listing(live, info, found)})
    return await _send_file(request, live, info, found, stat)


async def _send_tar(request: web.Request, live: LiveViews, instance: Instance, found: Found) -> web.StreamResponse:
    async with open_tar(live, instance, found) as chunks:
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


async def _listing(live: LiveViews, instance: Instance, found: Found) -> list[dict[str, Any]]:
    items = []
    reader = TarReader()
    async with open_tar(live, instance, found) as chunks:
        async for chunk in chunks:
            for item in reader.feed(chunk):
                if isinstance(item, Member) and item.name.strip("/").count("/") == 1:
                    items.append(_entry(item))
            if reader.ended:
                break
    return sorted(items, key=lambda e: e["name"])


async def _send_file(
    request: web.Request, live: LiveViews, instance: Instance, found: Found, stat: PathStat
) -> web.StreamResponse:
    reader = TarReader()
    async with open_tar(live, instance, found) as chunks:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(stat.size),
                "X-Parallax-Path": found.real.encode("utf-8", "surrogateescape").decode("latin-1", "replace"),
                "X-Parallax-Mode": f"{permission_bits(stat.mode):04o}",
            }
        )
        await response.prepare(request)
        members = 0
        async for chunk in chunks:
            for item in reader.feed(chunk):
                if isinstance(item, Member):
                    members += 1
                    if members > 1 or item.kind != "file":
                        raise ConnectionResetError  # changed under us: end the body short, never other bytes
                else:
                    await response.write(item)
            if reader.ended:
                break
    await response.write_eof()
    return response


def _size_limit(request: web.Request) -> int:
    limit = request.app[SETTINGS].files_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the upload is larger than {limit} bytes (PARALLAX_FILES_MAX_BYTES)")
    return limit


class _Upload:
    """The request body as it goes to the engine, counted and (for a tar) checked member by member. A
    refusal ends the body early; ``refusal`` says what to answer."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.sent = 0
        self.refusal: ApiError | None = None

    async def _counted(self) -> AsyncIterator[bytes]:
        async for chunk in self.request.content.iter_chunked(CHUNK_BYTES):
            self.sent += len(chunk)
            if self.sent > self.limit:
                self.refusal = ApiError(
                    413, "PAYLOAD_TOO_LARGE", f"the upload is larger than {self.limit} bytes (PARALLAX_FILES_MAX_BYTES)"
                )
                raise self.refusal
            yield chunk

    async def file(self, name: str, size: int, owner: tuple[int, int]) -> AsyncIterator[bytes]:
        yield file_header(name, size, owner)
        async for chunk in self._counted():
            yield chunk
        if self.sent != size:
            self.refusal = ApiError(400, "BAD_REQUEST", f"the body ended after {self.sent} of {size} bytes")
            raise self.refusal
        yield padding(size) + END_OF_ARCHIVE

    async def tar(self, live: LiveViews, instance: Instance, directory: Found) -> AsyncIterator[bytes]:
        """The tar body, checked; through the archive API (extracted by dockerd as root) owners are set
        to the agent's, and directories that exist already are checked not to be planted symlinks. By exec
        (a tmpfs) ``tar -x`` runs as the agent's user, so it writes nothing the agent could not."""
        owner = None if directory.by_exec else await live.file_owner(instance.id)
        reader, guard = TarReader(owner=owner, relay=True), UploadGuard()
        async for chunk in self._counted():
            implied: list[tuple[int, bytes]] = []
            try:
                for item in reader.feed(chunk):
                    if isinstance(item, Member):
                        for parent in guard.check(item):
                            if owner is not None and not await self._check_parent(
                                live, instance.id, directory.real, parent, item
                            ):
                                implied.append((item.offset, directory_header(parent, owner)))
            except TarRefused as exc:
                self.refusal = ApiError(
                    422, "VALIDATION_FAILED", f"tar refused: {exc}", [{"field": "body", "message": str(exc)}]
                )
                raise
            yield _spliced(reader.take_output(), implied)
        if not reader.ended:
            self.refusal = ApiError(400, "BAD_REQUEST", "the tar stream ended before its end-of-archive blocks")
            raise self.refusal

    async def _check_parent(self, live: LiveViews, instance: str, directory: str, parent: str, member: Member) -> bool:
        """Whether the parent directory exists already; ``TarRefused`` when it is something else (a
        symlink the agent planted)."""
        stat = await live.stat_path(instance, posixpath.join(directory, parent))
        if stat is not None and kind_of(stat.mode) != "directory":
            raise TarRefused(
                f"member {member.name[:80]!r} would be written through {parent[:80]!r}, which is not a directory"
            )
        return stat is not None


def _spliced(output: bytes, inserts: list[tuple[int, bytes]]) -> bytes:
    """``output`` with each insert's bytes put in at its offset (offsets in ``output``, in order)."""
    if not inserts:
        return output
    pieces, last = [], 0
    for offset, data in inserts:
        pieces += [output[last:offset], data]
        last = offset
    pieces.append(output[last:])
    return b"".join(pieces)


@routes.put("/agents/{name}/files")
@openapi.describe(
    "Write a workspace file (the body's bytes), or extract a tar into a directory (Content-Type application/x-tar)",
    parameters=[openapi.NAME, PATH],
    request_body={
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    responses={
        "200": {"description": "written", "content": {"application/json": {"schema": {"type": "object"}}}},
        **openapi.errors(400, 401, 403, 404, 409, 411, 413, 422, 502, 503),
    },
)
async def put_files(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = _path(request)
    limit = _size_limit(request)
    is_tar = request.content_type == "application/x-tar"
    if not is_tar and request.content_length is None:
        raise ApiError(411, "LENGTH_REQUIRED", "a file upload needs a Content-Length (or send a tar)")
    _, info = await running_instance(request, name, wake=False)
    await note_activity(request.app, name)
    live = request.app[LIVE]
    upload = _Upload(request, limit)
    try:
        found = await resolve(live, info, path)
        real = found.real
        if is_tar:
            if found.stat is None or kind_of(found.stat.mode) != "directory":
                raise ApiError(404, "NOT_FOUND", f"{path[:200]} is not an existing directory to extract the tar into")
            await put_tar(live, info, found, upload.tar(live, info, found))
        else:
            if real in FILE_ROOTS or (found.stat is not None and kind_of(found.stat.mode) != "file"):
                raise ApiError(
                    409, "CONFLICT", f"{path[:200]} exists and is not a file (send a tar to extract into a directory)"
                )
            directory, base = posixpath.split(real)
            owner = (0, 0) if found.by_exec else await live.file_owner(info.id)
            body = upload.file(base, int(request.content_length or 0), owner)
            await put_tar(live, info, Found(directory, None, found.by_exec), body)
    except (AgentError, OSError, TarRefused, ApiError) as exc:
        if upload.refusal is not None:
            raise upload.refusal from None
        raise exc
    if upload.refusal is not None:
        raise upload.refusal
    return web.json_response({"path": real, "bytes": upload.sent})


@routes.delete("/agents/{name}/files")
@openapi.describe(
    "Delete a workspace file or directory (a symlink itself, never its target)",
    parameters=[openapi.NAME, PATH],
    responses={
        "200": {"description": "deleted", "content": {"application/json": {"schema": {"type": "object"}}}},
        **openapi.errors(400, 401, 403, 404, 409, 422, 429, 502, 503),
    },
)
async def delete_files(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = _path(request)
    if path in FILE_ROOTS:
        raise _refusal(PathRefused(f"{path} itself cannot be deleted; delete what is in it"))
    _, info = await running_instance(request, name, wake=False)
    await note_activity(request.app, name)
    live = request.app[LIVE]
    found = await resolve(live, info, path, follow_last=False)
    real = found.real
    if found.stat is None:
        raise ApiError(404, "NOT_FOUND", f"{path[:200]} does not exist")
    slots = exec_slots(request.app)
    try:
        slots.take(name)
    except ExecsBusy as busy:
        return busy.response()
    try:
        # as the agent's user: whatever changes meanwhile, nothing the agent could not delete itself
        async with live.open_exec(info.id, ExecCommand(("rm", "-rf", "--", real), {})) as process:
            errors = bytearray()
            while (piece := await process.read()) is not None:
                errors += piece[1][:4096]
            code = await exit_code(process)
    finally:
        slots.give_back(name)
    if code not in (0, None):
        raise ApiError(403, "FORBIDDEN", f"deleting {real[:200]} failed: {errors.decode(errors='replace')[:500]}")
    return web.json_response({"path": real, "deleted": True})
