"""Watching Agents and controller events: ``GET /events`` (Server-Sent Events), ``GET /ws`` (WebSocket)
and ``GET /agents?watch=true``.

A client resumes from the last ``resourceVersion`` it saw (``Last-Event-ID`` or ``?resourceVersion=``)
without a gap; when that version is too old it gets an ``ERROR`` item with code 410 and must re-list.
So does a client that reads too slowly to keep up (more than ``PARALLAX_WATCH_BUFFER`` items behind),
and then its stream ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from api.errors import ApiError
from api.params import integer_value
from api.state import STORE, WATCH
from controller.selector import parse_selector
from controller.watch import Expired, Listener, WatchItem

routes = web.RouteTableDef()

HEARTBEAT_SECONDS = 15.0


HUB_CATCH_UP_SECONDS = 2.0


async def _since(request: web.Request) -> int | None:
    """The version to resume after (``Last-Event-ID``, else ``?resourceVersion=``), checked before the
    stream opens: not ASCII digits, or newer than anything the store has committed, is a 400 naming it."""
    header = request.headers.get("Last-Event-ID")
    field = "Last-Event-ID" if header else "resourceVersion"
    since = integer_value(header or request.query.get("resourceVersion"), field)
    if since is None:
        return None
    latest = await request.app[STORE].current_rv()
    hub = request.app[WATCH]
    # The hub publishes a commit a moment after the store answered it: wait for that, never longer.
    if since > latest or not await hub.caught_up(since, HUB_CATCH_UP_SECONDS):
        raise ApiError(
            400,
            "RESOURCE_VERSION_TOO_LARGE",
            f"{field} {since} is newer than the latest resourceVersion ({latest}): it is not from this "
            "store's history; list again and watch from the version you get",
            [{"field": field, "message": f"newer than the latest resourceVersion {latest}"}],
        )
    return since


def _filter(request: web.Request, include_events: bool) -> Callable[[WatchItem], bool]:
    name = request.query.get("name") or request.query.get("agent")
    selector = parse_selector(request.query.get("labelSelector", request.query.get("selector", "")))

    def accept(item: WatchItem) -> bool:
        if item.type == "EVENT" and not include_events:
            return False
        return (not name or item.name == name) and selector(item.labels)

    return accept


def _expired(message: str) -> dict[str, Any]:
    return {"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": message}}


async def _initial_items(
    request: web.Request, listener: Listener, since: int | None, synthetic: bool
) -> list[dict[str, Any]]:
    """What a watch starts with: the current agents (list-then-watch) or just a bookmark."""
    if since is not None:
        return []
    items: list[dict[str, Any]] = []
    bookmark = request.app[WATCH].last_rv
    if synthetic:
        for agent in await request.app[STORE].list():
            item = WatchItem(
                agent.metadata.resource_version, "ADDED", agent.name, agent.metadata.labels, agent.to_manifest()
            )
            if listener.accept(item):
                items.append({"type": "ADDED", "object": item.object})
    items.append({"type": "BOOKMARK", "resourceVersion": str(bookmark), "object": {}})
    return items


async def _pump(
    listener: Listener,
    send: Callable[[dict[str, Any], int | None], Awaitable[None]],
    heartbeat: Callable[[], Awaitable[None]],
) -> None:
    while True:
        try:
            item = await asyncio.wait_for(listener.next(), HEARTBEAT_SECONDS)
        except TimeoutError:
            await heartbeat()
            continue
        except Expired as exc:  # cut off: the client read too slowly to keep up
            await send(_expired(str(exc)), None)
            return
        if item is None:
            return
        await send(item.to_dict(), item.resource_version)


async def sse(request: web.Request, *, include_events: bool, synthetic: bool) -> web.StreamResponse:
    since = await _since(request)
    hub = request.app[WATCH]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )

    async def send(payload: dict[str, Any], rv: int | None) -> None:
        head = f"id: {rv}\n" if rv is not None else ""
        await response.write(f"{head}event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode())

    async def heartbeat() -> None:
        await response.write(b": keepalive\n\n")

    try:
        listener = hub.listen(since, _filter(request, include_events))
    except Expired as exc:
        await response.prepare(request)
        await send(_expired(str(exc)), None)
        await response.write_eof()
        return response
    try:
        initial = await _initial_items(request, listener, since, synthetic)
        await response.prepare(request)
        for payload in initial:
            rv = int(payload["resourceVersion"]) if payload["type"] == "BOOKMARK" else None
            await send(payload, rv)
        await _pump(listener, send, heartbeat)
    finally:
        # a client that went is found by a write (ConnectionResetError) or, while nothing happens, by
        # api.streams, which cancels this handler; both reach here and api.streams answers nothing
        listener.close()
    return response


@routes.get("/events")
async def events_stream(request: web.Request) -> web.StreamResponse:
    return await sse(request, include_events=True, synthetic=False)


@routes.get("/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    since = await _since(request)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS)
    await ws.prepare(request)
    try:
        listener = request.app[WATCH].listen(since, _filter(request, include_events=True))
    except Expired as exc:
        await ws.send_json(_expired(str(exc)))
        await ws.close()
        return ws

    async def send(payload: dict[str, Any], rv: int | None) -> None:
        await ws.send_json(payload)

    async def heartbeat() -> None:
        return None

    async def drain() -> None:
        async for message in ws:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    reader = asyncio.create_task(drain())
    try:
        for payload in await _initial_items(request, listener, since, synthetic=False):
            await send(payload, None)
        pump = asyncio.create_task(_pump(listener, send, heartbeat))
        try:
            await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
    except ConnectionResetError:
        pass
    finally:
        reader.cancel()
        listener.close()
        if not ws.closed and request.transport is not None and not request.transport.is_closing():
            await ws.close()
    return ws
