"""The Parallax runtime client's WebSocket (``/api/ws``; ``/ws`` on ``PARALLAX_COMPAT_PORT``, where the
client looks for it): runtime events as ``{event, data, timestamp}`` frames, and inbound
``{"type": "send", "agentId", "message"}`` frames delivered like ``POST /api/agents/{id}/send``.

The events come from the watch hub (the store's feed, never a poll): each change of an agent is turned
into its handle and compared with the handle this connection last saw (``agent_handle.runtime_events``),
so a client gets ``agent_started``, ``agent_ready``, ``login_required``, ``agent_error`` and
``agent_stopped`` in the order the changes were committed; and ``message`` events, the agents' answers to
messages sent through ``/api`` (``api.server.compat.answers``). Every connected client gets every event (the
original server sent some only to per-agent subscribers, which its own client never is).

A connection counts against ``PARALLAX_MAX_STREAMS`` (``api.server.throttle``) and gives its watch
listener back when the client goes. A client too slow to keep up is closed (1013, try again), like a
watch that is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from api.server import openapi
from api.server.compat.answers import ANSWERS
from api.server.compat.routes import ACTIVITY, send_message
from api.server.errors import ApiError, translate_error
from api.server.state import SETTINGS, STORE, WATCH
from controller.compat.agent_handle import handle_of, runtime_events
from controller.model.timestamps import now_iso
from controller.observe.watch import Expired, Listener, WatchItem

routes = web.RouteTableDef()

HEARTBEAT_SECONDS = 15.0
MAX_INBOUND_BYTES = 512 * 1024


def frame(event: str, data: Any) -> dict[str, Any]:
    return {"event": event, "data": data, "timestamp": now_iso()}


class Seen:
    """The handle (and the resourceVersion it is from) of every agent, as this connection last saw it."""

    def __init__(self, request: web.Request) -> None:
        self.activity = request.app[ACTIVITY]
        self.handles: dict[str, tuple[int, dict[str, Any]]] = {}

    def handle(self, manifest: dict[str, Any]) -> dict[str, Any]:
        uid = (manifest.get("metadata") or {}).get("uid", "")
        return handle_of(manifest, last_activity=self.activity.last.get(uid))

    def frames(self, item: WatchItem) -> list[dict[str, Any]]:
        known = self.handles.get(item.name)
        if known is not None and item.resource_version <= known[0]:
            return []  # already in the list this connection started from
        after = self.handle(item.object)
        deleted = item.type == "DELETED"
        events = runtime_events(known[1] if known else None, after, deleted=deleted)
        if deleted:
            self.handles.pop(item.name, None)
        else:
            self.handles[item.name] = (item.resource_version, after)
        return [frame(event, data) for event, data in events]


async def _inbound(request: web.Request, ws: web.WebSocketResponse, text: str) -> None:
    """One frame from the client: a send, answered with a ``send_result`` frame (never an error frame:
    the client would emit it as its own ``error``)."""
    agent_id: Any = None
    try:
        try:
            message = json.loads(text)
        except ValueError:
            raise ApiError(400, "MALFORMED_JSON", "the frame is not JSON") from None
        if not isinstance(message, dict) or message.get("type") != "send":
            raise ApiError(400, "BAD_REQUEST", 'type: only {"type": "send", "agentId", "message"} frames are read')
        agent_id, body = message.get("agentId"), message.get("message")
        if not isinstance(agent_id, str) or not agent_id:
            raise ApiError(422, "VALIDATION_FAILED", "agentId: must be a non-empty string")
        if not isinstance(body, str) or not body:
            raise ApiError(422, "VALIDATION_FAILED", "message: must be a non-empty string")
        await send_message(request, agent_id, body)
        result: dict[str, Any] = {"agentId": agent_id, "sent": True}
    except Exception as exc:
        error = translate_error(exc)  # an unknown exception is raised: a bug, logged with its traceback
        result = {"agentId": agent_id, "sent": False, "error": error.message, "code": error.code}
    await ws.send_json(frame("send_result", result))


async def _read(request: web.Request, ws: web.WebSocketResponse) -> None:
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await _inbound(request, ws, message.data)
        elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


async def _relay(queue: asyncio.Queue[dict[str, Any] | None], ws: web.WebSocketResponse) -> None:
    """Agents' answers (``answers``) as ``message`` events."""
    while True:
        message = await queue.get()
        if message is None:  # too slow to keep up, or the server is shutting down
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"reconnect")
            return
        await ws.send_json(frame("message", {"message": message}))


async def _pump(listener: Listener, seen: Seen, ws: web.WebSocketResponse) -> None:
    while True:
        try:
            item = await listener.next()
        except Expired:
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"fell behind; reconnect")
            return
        if item is None:  # the server is shutting down
            return
        for payload in seen.frames(item):
            await ws.send_json(payload)


@routes.get("/api/ws")
@openapi.describe(
    "Parallax runtime client: runtime events over a WebSocket, and inbound send frames",
    blocking=True,
    responses={
        "101": {"description": "switching to the WebSocket protocol"},
        "403": {"description": "a browser page (an Origin header) on an API without a token"},
        **openapi.errors(401, 429),
    },
)
async def runtime_websocket(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Origin") is not None and request.app[SETTINGS].api_token is None:
        # WebSockets are not bound by CORS: without this, any page the user visits could drive the agents.
        raise ApiError(
            403, "FORBIDDEN", "a WebSocket from a browser page (Origin header) needs PARALLAX_API_TOKEN to be set"
        )
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_INBOUND_BYTES)
    await ws.prepare(request)
    listener = request.app[WATCH].listen(None, lambda item: item.type != "EVENT")
    answers = request.app[ANSWERS].connect()
    tasks: list[asyncio.Task[None]] = []
    try:
        seen = Seen(request)
        for agent in await request.app[STORE].list():  # after listening: nothing committed between is missed
            seen.handles[agent.name] = (agent.metadata.resource_version, seen.handle(agent.to_manifest()))
        tasks = [
            asyncio.create_task(_read(request, ws)),
            asyncio.create_task(_pump(listener, seen, ws)),
            asyncio.create_task(_relay(answers, ws)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except ConnectionResetError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await task
        listener.close()
        request.app[ANSWERS].disconnect(answers)
        if not ws.closed and request.transport is not None and not request.transport.is_closing():
            await ws.close()
    return ws
