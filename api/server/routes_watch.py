"""The watch stream: agent changes (ADDED / MODIFIED / DELETED) and, on ``GET /events`` (Server-Sent
Events) and ``GET /ws`` (WebSocket), the agents' events as EVENT items; ``GET /agents?watch=true`` is the
same stream over SSE without them. (An agent's event list, ``GET /agents/{name}/events``, is
``routes_live.agent_event_list``.)

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

from api.server import openapi
from api.server.errors import ApiError
from api.server.params import integer_value
from api.server.state import STORE, WATCH
from controller.model.selector import parse_selector
from controller.observe.watch import Expired, Listener, WatchItem

routes = web.RouteTableDef()

HEARTBEAT_SECONDS = 15.0


HUB_CATCH_UP_SECONDS = 2.0

RESOURCE_VERSION = {"type": "string", "pattern": "^[0-9]*$", "maxLength": 18}


def resume_parameters(*, blocking: bool = False) -> list[dict[str, Any]]:
    """``resourceVersion`` and ``Last-Event-ID``, the version a watch resumes after (``_since``)."""
    header: dict[str, Any] = {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": RESOURCE_VERSION,
        "description": "resume after this version (the last SSE id seen); used before resourceVersion",
    }
    if blocking:
        header["x-parallax-blocking"] = True
    return [
        openapi.query(
            "resourceVersion",
            RESOURCE_VERSION,
            "resume after this version; one newer than the store's latest is a 400 RESOURCE_VERSION_TOO_LARGE, "
            "one too old an ERROR item with code 410 in the stream",
            blocking=blocking,
        ),
        header,
    ]


WATCH_REFUSED = {
    "description": (
        "A bad query parameter, named by details[0].field; or RESOURCE_VERSION_TOO_LARGE: the version to resume "
        "after (resourceVersion or Last-Event-ID) is newer than the store's latest, so it is from another "
        "history: list again and watch from the version you get"
    ),
    "content": {openapi.JSON: {"schema": openapi.ref("Error")}},
}


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


def _filter(request: web.Request, with_agent_events: bool) -> Callable[[WatchItem], bool]:
    name = request.query.get("name") or request.query.get("agent")
    selector = parse_selector(request.query.get("labelSelector", request.query.get("selector", "")))

    def accept(item: WatchItem) -> bool:
        if item.type == "EVENT" and not with_agent_events:
            return False
        return (not name or item.name == name) and selector(item.labels)

    return accept


def _expired(message: str) -> dict[str, Any]:
    return {"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": message}}


async def _initial_items(
    request: web.Request, listener: Listener, since: int | None, synthetic: bool
) -> list[tuple[dict[str, Any], int | None]]:
    """What a watch starts with: the current agents (list-then-watch) or just a bookmark, each with the
    resourceVersion an SSE client may resume after (the bookmark's; none for the listed agents)."""
    if since is not None:
        return []
    items: list[tuple[dict[str, Any], int | None]] = []
    bookmark = request.app[WATCH].last_rv
    if synthetic:
        for agent in await request.app[STORE].list():
            item = WatchItem(
                agent.metadata.resource_version, "ADDED", agent.name, agent.metadata.labels, agent.to_manifest()
            )
            if listener.accept(item):
                items.append(({"type": "ADDED", "object": item.object}, None))
    items.append(({"type": "BOOKMARK", "resourceVersion": str(bookmark), "object": {}}, bookmark))
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


async def watch_over_sse(request: web.Request, *, with_agent_events: bool, synthetic: bool) -> web.StreamResponse:
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
        listener = hub.listen(since, _filter(request, with_agent_events))
    except Expired as exc:
        await response.prepare(request)
        await send(_expired(str(exc)), None)
        await response.write_eof()
        return response
    try:
        initial = await _initial_items(request, listener, since, synthetic)
        await response.prepare(request)
        for payload, rv in initial:
            await send(payload, rv)
        await _pump(listener, send, heartbeat)
    finally:
        # a client that went is found by a write (ConnectionResetError) or, while nothing happens, by
        # api.server.streams, which cancels this handler; both reach here and api.server.streams answers nothing
        listener.close()
    return response


@routes.get("/events")
@openapi.describe(
    "Agent changes and controller events as Server-Sent Events",
    blocking=True,
    parameters=[openapi.SELECTOR, openapi.query("name", {"type": "string"}, "only this agent"), *resume_parameters()],
    responses={
        "200": {
            "description": "an endless event stream",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "400": WATCH_REFUSED,
        **openapi.errors(401, 429),
    },
)
async def watch_stream(request: web.Request) -> web.StreamResponse:
    return await watch_over_sse(request, with_agent_events=True, synthetic=False)


@routes.get("/ws")
@openapi.describe(
    "Agent changes and controller events over a WebSocket",
    blocking=True,
    parameters=[openapi.SELECTOR, openapi.query("name", {"type": "string"}, "only this agent"), *resume_parameters()],
    responses={
        "101": {"description": "switching to the WebSocket protocol"},
        "400": WATCH_REFUSED,
        **openapi.errors(401, 429),
    },
)
async def watch_websocket(request: web.Request) -> web.WebSocketResponse:
    since = await _since(request)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS)
    await ws.prepare(request)
    try:
        listener = request.app[WATCH].listen(since, _filter(request, with_agent_events=True))
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
        for payload, rv in await _initial_items(request, listener, since, synthetic=False):
            await send(payload, rv)
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
