"""``GET|PUT|DELETE /agents/{name}/files?path=/workspace/...``: an agent's workspace files, streamed.

Every path is resolved component by component through the engine's stat (Docker's archive HEAD),
following the symlinks the agent may have planted, and is refused unless the real path lies in the
workspace (``controller.model.agent_files``). Downloads and tar uploads are streamed; an upload's members are
checked as they pass (``UploadGuard``), before the engine extracts them. Reads work on a stopped
agent's container too (local Docker); writes and deletes need it running.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.server import openapi
from api.server.activity import note_activity
from api.server.errors import ApiError
from api.server.routes_exec import exec_slots, running_instance
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
    file_header,
    kind_of,
    padding,
    permission_bits,
    requested_path,
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


async def resolve(
    live: LiveViews, instance: str, path: str, *, follow_last: bool = True
) -> tuple[str, PathStat | None]:
    """The real path of ``path`` and its stat (None when the last component does not exist), every
    symlink on the way followed and checked to stay in the workspace; 404 when a directory on the way
    is missing, 403 when a symlink leads out."""
    steps = components(path)
    current, rest = steps[0], [posixpath.basename(s) for s in steps[1:]]
    hops = 0
    while True:
        try:
            stat = await live.stat_path(instance, current)
        except PathUnresolvable as exc:
            raise ApiError(
                400, "BAD_REQUEST", f"{path[:200]}: {exc}", [{"field": "path", "message": str(exc)}]
            ) from None
        if stat is None:
            if rest:
                raise ApiError(404, "NOT_FOUND", f"{path[:200]}: {current[:200]} does not exist")
            return current, None
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
            continue
        if not rest:
            return current, stat
        if kind_of(stat.mode) != "directory":
            raise ApiError(404, "NOT_FOUND", f"{path[:200]}: {current[:200]} is not a directory")
        current = posixpath.join(current, rest.pop(0))


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
    real, stat = await resolve(live, info.id, path)
    if stat is None:
        raise ApiError(404, "NOT_FOUND", f"{path[:200]} does not exist")
    kind = kind_of(stat.mode)
    if kind == "other":
        raise _refusal(PathRefused(f"{path[:200]} is a device, fifo or socket; only files and directories are served"))
    if archive == "tar":
        return await _send_tar(request, live, info.id, real)
    if kind == "directory":
        return web.json_response({"path": real, "items": await _listing(live, info.id, real)})
    return await _send_file(request, live, info.id, real, stat)


async def _send_tar(request: web.Request, live: LiveViews, instance: str, real: str) -> web.StreamResponse:
    async with live.open_archive(instance, real) as chunks:
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


async def _listing(live: LiveViews, instance: str, real: str) -> list[dict[str, Any]]:
    items = []
    reader = TarReader()
    async with live.open_archive(instance, real) as chunks:
        async for chunk in chunks:
            for item in reader.feed(chunk):
                if isinstance(item, Member) and item.name.strip("/").count("/") == 1:
                    items.append(_entry(item))
            if reader.ended:
                break
    return sorted(items, key=lambda e: e["name"])


async def _send_file(
    request: web.Request, live: LiveViews, instance: str, real: str, stat: PathStat
) -> web.StreamResponse:
    reader = TarReader()
    async with live.open_archive(instance, real) as chunks:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(stat.size),
                "X-Parallax-Path": real.encode("utf-8", "surrogateescape").decode("latin-1", "replace"),
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

    async def tar(self, live: LiveViews, instance: str, directory: str) -> AsyncIterator[bytes]:
        reader, guard = TarReader(owner=await live.file_owner(instance)), UploadGuard()
        async for chunk in self._counted():
            try:
                for item in reader.feed(chunk):
                    if isinstance(item, Member):
                        for parent in guard.check(item):
                            await self._check_parent(live, instance, directory, parent, item)
            except TarRefused as exc:
                self.refusal = ApiError(
                    422, "VALIDATION_FAILED", f"tar refused: {exc}", [{"field": "body", "message": str(exc)}]
                )
                raise
            yield reader.take_output()
        if not reader.ended:
            self.refusal = ApiError(400, "BAD_REQUEST", "the tar stream ended before its end-of-archive blocks")
            raise self.refusal

    async def _check_parent(self, live: LiveViews, instance: str, directory: str, parent: str, member: Member) -> None:
        stat = await live.stat_path(instance, posixpath.join(directory, parent))
        if stat is not None and kind_of(stat.mode) != "directory":
            raise TarRefused(
                f"member {member.name[:80]!r} would be written through {parent[:80]!r}, which is not a directory"
            )


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
        if is_tar:
            real, stat = await resolve(live, info.id, path)
            if stat is None or kind_of(stat.mode) != "directory":
                raise ApiError(404, "NOT_FOUND", f"{path[:200]} is not an existing directory to extract the tar into")
            await live.put_archive(info.id, real, upload.tar(live, info.id, real))
        else:
            real, stat = await resolve(live, info.id, path)
            if real in FILE_ROOTS or (stat is not None and kind_of(stat.mode) != "file"):
                raise ApiError(
                    409, "CONFLICT", f"{path[:200]} exists and is not a file (send a tar to extract into a directory)"
                )
            directory, base = posixpath.split(real)
            owner = await live.file_owner(info.id)
            await live.put_archive(info.id, directory, upload.file(base, int(request.content_length or 0), owner))
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
    real, stat = await resolve(live, info.id, path, follow_last=False)
    if stat is None:
        raise ApiError(404, "NOT_FOUND", f"{path[:200]} does not exist")
    slots = exec_slots(request.app)
    slots.take(name)
    try:
        # as the agent's user: whatever changes meanwhile, nothing the agent could not delete itself
        async with live.open_exec(info.id, ExecCommand(("rm", "-rf", "--", real), {})) as process:
            errors = bytearray()
            while (piece := await process.read()) is not None:
                errors += piece[1][:4096]
            code = await process.exit_code()
    finally:
        slots.give_back(name)
    if code not in (0, None):
        raise ApiError(403, "FORBIDDEN", f"deleting {real[:200]} failed: {errors.decode(errors='replace')[:500]}")
    return web.json_response({"path": real, "deleted": True})
