"""Live views of one agent: logs, metrics, restart, send, and its event list.

Logs, metrics and send talk to Docker directly (they read from or write to a running container);
restart is a desired-state change, like ``kubectl rollout restart``: an annotation that changes the
config hash, so the reconciler recreates the container.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from api.server import openapi
from api.server.activity import note_activity
from api.server.errors import ApiError, read_json
from api.server.params import bad_parameter, flag, parse_integer, parse_number
from api.server.state import CONTROLLER, LIVE, RUNTIME, SETTINGS, STATS, STORE
from controller.model.agent import ANNOTATION_RESTARTED_AT, Agent
from controller.model.errors import SOCKET_ERROR, AgentError
from controller.model.timestamps import format_time, now_iso, parse_runtime_time, parse_time
from controller.observe.stats import summarize
from controller.reconcile.lifecycle import idle_at
from controller.runtime.interface import Instance
from controller.store.interface import Conflict, NotFound, Store, Write

routes = web.RouteTableDef()

MAX_MESSAGE_BYTES = 256 * 1024
DEFAULT_TAIL = 100


def container_id_of(request: web.Request, agent: Agent) -> str:
    container_id = agent.status.get("containerId")
    if container_id:
        return str(container_id)
    controller = request.app[CONTROLLER]
    if not controller.docker_up:
        raise AgentError(SOCKET_ERROR, controller.docker_error or "the Docker daemon is unreachable")
    raise ApiError(409, "NOT_RUNNING", f"agent {agent.name!r} has no container yet (phase {agent.phase})")


async def running_container(request: web.Request, agent: Agent) -> Instance:
    container_id = container_id_of(request, agent)
    info = await request.app[RUNTIME].instance(container_id)
    if info is None:
        raise ApiError(409, "NOT_RUNNING", f"agent {agent.name!r} has no container right now (phase {agent.phase})")
    return info


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600}


def _parse_since(raw: str | None) -> int | None:
    """``since`` as Unix seconds, RFC 3339, or a relative duration like ``30s``, ``5m``, ``2h`` (ASCII
    digits only: ``²`` or ``١٢`` are no number here, whatever ``str.isdigit`` says)."""
    if not raw:
        return None
    relative = parse_number(raw[:-1]) if raw[-1] in _SINCE_UNITS else None
    if relative is not None:
        return int(time.time() - relative * _SINCE_UNITS[raw[-1]])
    absolute = parse_number(raw)
    if absolute is not None:
        return int(absolute)
    try:
        if raw.isascii():
            return int(parse_time(raw).timestamp())
    except (ValueError, OverflowError, OSError):
        pass
    raise bad_parameter("since", f"{raw[:40]!r} is not a time: use Unix seconds, RFC 3339 or a duration like 5m")


def parse_tail(raw: str | None) -> str:
    """``tail``: a number of lines (ASCII digits) or ``all``; what Docker is given, never anything else."""
    if raw is None or raw == "":
        return str(DEFAULT_TAIL)
    if raw == "all":
        return raw
    lines = parse_integer(raw)
    if lines is None:
        raise bad_parameter("tail", f"must be a number of lines (ASCII digits) or 'all', not {raw[:40]!r}")
    return str(lines)


# The Docker side of a followed log breaking mid-stream ends the stream (the client sees it end).
_DOCKER_BROKE = (AgentError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


@routes.get("/agents/{name}/logs")
@openapi.describe(
    "The container's output",
    parameters=[
        openapi.NAME,
        openapi.query("tail", {"type": "string", "pattern": "^([0-9]+|all)$"}, "last N lines, or all"),
        openapi.query("since", {"type": "string"}, "Unix seconds, RFC 3339, or a duration like 5m"),
        openapi.query("timestamps", openapi.FLAG, "prefix lines with their time"),
        openapi.query("follow", openapi.FLAG, "keep streaming new lines", blocking=True),
    ],
    responses={
        "200": {"description": "log lines", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **openapi.errors(400, 401, 404, 409, 429, 502, 503),
    },
)
async def logs(request: web.Request) -> web.StreamResponse:
    query = request.query
    tail = parse_tail(query.get("tail"))
    since = _parse_since(query.get("since"))
    follow, timestamps = flag(query, "follow"), flag(query, "timestamps")
    agent = await request.app[STORE].get(request.match_info["name"])
    container_id = container_id_of(request, agent)
    # Docker's refusal (no such container, daemon unreachable) is answered as an error, before any line.
    async with request.app[LIVE].open_logs(
        container_id, tail=tail, since=since, timestamps=timestamps, follow=follow
    ) as lines:
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)  # at once: a follower of a quiet agent knows the stream is open
        # A followed stream is activity (spec.lifecycle.idleTimeoutSeconds) for as long as it is open.
        watching = asyncio.create_task(_active_while_open(request.app, agent.name)) if follow else None
        try:
            while True:
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    break
                except _DOCKER_BROKE:
                    break
                # A client that went is found here (ConnectionResetError) or, while the agent is quiet, by
                # api.server.streams, which cancels this handler; either way the Docker connection is closed.
                await response.write(line.encode() + b"\n")
        finally:
            if watching is not None:
                watching.cancel()
    await response.write_eof()
    return response


async def _active_while_open(app: web.Application, name: str) -> None:
    """Activity of a followed log stream: at its start and every ``PARALLAX_ACTIVITY_WRITE_SECONDS`` after."""
    every = max(app[SETTINGS].activity_write_seconds, 1.0)
    while True:
        await note_activity(app, name)
        await asyncio.sleep(every)


async def log_lines(request: web.Request, agent: Agent, tail: str) -> list[str]:
    """The last ``tail`` lines (``parse_tail``'s form) of the agent's container output, not followed."""
    container_id = container_id_of(request, agent)
    async with request.app[LIVE].open_logs(
        container_id, tail=tail, since=None, timestamps=False, follow=False
    ) as lines:
        return [line async for line in lines]


@routes.get("/agents/{name}/metrics")
@openapi.describe(
    "The container's resource usage",
    parameters=[openapi.NAME],
    responses={"200": openapi.answer("AgentMetrics", "usage"), **openapi.errors(401, 404, 409, 502, 503)},
    schemas={
        "AgentMetrics": {
            "type": "object",
            "required": ["agent", "containerId"],
            "properties": {
                "agent": {"type": "string"},
                "containerId": {"type": "string"},
                "cpuPercent": {"type": "number"},
                "memoryBytes": {"type": "integer"},
                "memoryLimitBytes": {"type": "integer"},
                "restartCount": {"type": "integer"},
            },
        }
    },
)
async def agent_metrics(request: web.Request) -> web.Response:
    agent = await request.app[STORE].get(request.match_info["name"])
    return web.json_response(await resource_usage(request, agent))


async def resource_usage(request: web.Request, agent: Agent) -> dict[str, Any]:
    """The running agent's usage, from the refresher's latest sample (one taken now if it has none);
    409 when it is not running."""
    info = await running_container(request, agent)
    if not info.running:
        raise ApiError(409, "NOT_RUNNING", f"agent {agent.name!r} is not running (phase {agent.phase})")
    refresher = request.app[STATS]
    sample = refresher.latest(info.id) or await refresher.sample(info.id)
    age = time.monotonic() - sample.taken_at
    body: dict[str, Any] = {
        "agent": agent.name,
        "containerId": info.id,
        **summarize(sample.stats, sample.previous, parse_runtime_time(info.started_at), datetime.now(UTC)),
        "restartCount": int(agent.status.get("restartCount", 0)),
        "sampleAgeSeconds": round(age, 3),
    }
    return body


@routes.post("/agents/{name}/restart")
@openapi.describe(
    "Recreate the agent's container (a desired-state change, like kubectl rollout restart)",
    parameters=[openapi.NAME],
    responses={"202": openapi.answer("Agent", "Restart requested"), **openapi.errors(401, 404, 409, 503)},
)
async def restart(request: web.Request) -> web.Response:
    updated = await request_restart(request.app[STORE], request.match_info["name"])
    return web.json_response(updated.to_manifest(), status=202)


async def request_restart(store: Store, name: str) -> Agent:
    """Set the restart annotation on agent ``name`` (the reconciler then recreates its container)."""
    for _ in range(5):
        agent = await store.get(name)
        annotations = {**agent.metadata.annotations, ANNOTATION_RESTARTED_AT: now_iso()}
        wanted = Agent(replace(agent.metadata, annotations=annotations), agent.spec, agent.status)
        try:
            # Refused only if the desired state changed since the read (not for the controller's status
            # writes); then the change is let through to commit, read, and the restart made on top of it.
            (updated,) = await store.write_all([Write("replace", name, wanted, planned_from=agent)])
        except Conflict:
            if (await store.get(name)).metadata.deletion_timestamp is not None:
                raise
            await asyncio.sleep(0.05)
            continue
        return updated
    raise ApiError(409, "CONFLICT", f"agent {name!r} kept changing; try the restart again")


def frame_message(message: str) -> bytes:
    r"""One message as one line of the agent's stdin: backslashes, newlines and carriage returns inside it
    are written as ``\\``, ``\n`` and ``\r``, which the agent entrypoint turns back with ``printf %b``.
    So a multi-line prompt arrives as one message, with every backslash it had."""
    escaped = message.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return escaped.encode() + b"\n"


@routes.post("/agents/{name}/send")
@openapi.describe(
    "Write a line to the agent's stdin",
    parameters=[openapi.NAME],
    request_body=openapi.body("SendRequest"),
    responses={
        "202": openapi.answer("SendResult", "Sent"),
        **openapi.errors(400, 401, 404, 408, 409, 413, 422, 502, 503),
    },
    schemas={
        "SendRequest": {
            "type": "object",
            "required": ["message"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string", "minLength": 1, "description": "one line for the agent's stdin"}
            },
        },
        "SendResult": {
            "type": "object",
            "required": ["agent", "containerId", "bytes"],
            "properties": {
                "agent": {"type": "string"},
                "containerId": {"type": "string"},
                "bytes": {"type": "integer"},
            },
        },
    },
)
async def send(request: web.Request) -> web.Response:
    agent = await request.app[STORE].get(request.match_info["name"])
    body = await read_json(request)
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or message == "":
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            "message must be a non-empty string",
            [{"field": "message", "message": "required"}],
        )
    unknown = sorted(set(body) - {"message"})
    if unknown:
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            f"unknown field {unknown[0]!r}",
            [{"field": k, "message": "unknown field"} for k in unknown],
        )
    return web.json_response(await deliver(request, agent, message), status=202)


async def deliver(request: web.Request, agent: Agent, message: str) -> dict[str, Any]:
    """Write ``message`` to the running agent's stdin as one line; 413 when too large, 409 when it is
    not running. A send is activity, and wakes a suspended agent with ``resumeOnActivity``."""
    data = message.encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    if agent.spec.suspend and agent.spec.lifecycle.resume_on_activity:
        await note_activity(request.app, agent.name, wake=True)
        agent = await request.app[STORE].get(agent.name)
    else:
        await note_activity(request.app, agent.name)
    info = await running_container(request, agent)
    if not info.running:
        raise ApiError(409, "NOT_RUNNING", f"agent {agent.name!r} is not running (phase {agent.phase})")
    data = frame_message(message)
    await request.app[LIVE].write_stdin(info.id, data)
    return {"agent": agent.name, "containerId": info.id, "bytes": len(data)}


@routes.post("/agents/{name}/keepalive")
@openapi.describe(
    "Count as activity: keeps the agent from idling (spec.lifecycle.idleTimeoutSeconds)",
    parameters=[openapi.NAME],
    responses={"200": openapi.answer("Keepalive", "Activity recorded"), **openapi.errors(401, 404, 503)},
    schemas={
        "Keepalive": {
            "type": "object",
            "required": ["agent", "lastActivityTime"],
            "properties": {
                "agent": {"type": "string"},
                "lastActivityTime": {
                    "type": "string",
                    "description": "status.lastActivityTime (written at most every PARALLAX_ACTIVITY_WRITE_SECONDS)",
                },
                "idleAt": {
                    "type": ["string", "null"],
                    "description": "when the agent becomes idle without more activity (null: no idle timeout)",
                },
            },
        }
    },
)
async def keepalive(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    await store.get(name)  # 404 for an unknown agent
    await note_activity(request.app, name)
    agent = await store.get(name)
    due = idle_at(agent, agent.status, request.app[SETTINGS].activity_write_seconds)
    last = agent.status.get("lastActivityTime")
    return web.json_response({"agent": name, "lastActivityTime": last, "idleAt": format_time(due) if due else None})


@routes.get("/agents/{name}/events")
@openapi.describe(
    "The controller's events about an agent",
    parameters=[openapi.NAME],
    responses={"200": openapi.answer("EventList", "events"), **openapi.errors(401, 404, 503)},
    schemas={
        "Event": {
            "type": "object",
            "required": ["apiVersion", "kind", "involvedObject", "type", "reason", "message", "count"],
            "properties": {
                "apiVersion": {"const": "parallax.ai/v1"},
                "kind": {"const": "Event"},
                "involvedObject": {"type": "object"},
                "type": {"enum": ["Normal", "Warning"]},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "count": {"type": "integer", "minimum": 1},
                "firstTimestamp": {"type": "string"},
                "lastTimestamp": {"type": "string"},
                "metadata": {"type": "object"},
            },
        },
        "EventList": openapi.list_of("EventList", "Event"),
    },
)
async def agent_event_list(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    try:
        uid: str | None = (await store.get(name)).metadata.uid
    except NotFound:
        uid = None
    items = await store.list_events(name, uid)
    if uid is None and not items:
        raise NotFound(f"agent {name!r} not found")
    return web.json_response(
        {"apiVersion": "parallax.ai/v1", "kind": "EventList", "items": [e.to_dict() for e in items]}
    )
