"""``/api/*``: the HTTP contract of the Parallax control plane's runtime client (``runtime-client.ts`` in
HaruHunab1320/parallax), as an adapter over the same store as ``/agents``.

Creating, stopping and restarting write desired state (never Docker); logs, metrics and send use the same
live-view paths as ``/agents/{name}/...`` (``api.server.routes_live``). Agents are addressed by id, which
is the Agent's name. Errors are ``{"error": "<message naming the field>", "code", "details"}``: the client
reads ``error`` as a string.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from api.server import openapi
from api.server.compat.answers import ANSWERS, wait_answer
from api.server.errors import ApiError, read_json, translate_error
from api.server.params import bad_parameter, flag, integer
from api.server.routes_agents import runtime_classes_for
from api.server.routes_live import deliver, log_lines, parse_tail, request_restart, resource_usage, running_container
from api.server.state import CONTROLLER, SETTINGS, STORE
from api.server.streams import until_gone
from api.server.throttle import release_slot
from controller.admission.admit import AdmissionError, admit
from controller.compat.agent_config import ANNOTATION_EXECUTION_ID, to_agent_body
from controller.compat.agent_handle import ACTIVE_STATUSES, STATUSES, handle_of
from controller.model.agent import TYPES, Agent
from controller.model.timestamps import now_iso
from controller.store.interface import AlreadyExists, NotFound, StoreError, Write

routes = web.RouteTableDef()

MAX_GRACE_SECONDS = 3600
MAX_ANSWER_WAIT_MS = 3_600_000
LIST_PARAMETERS = frozenset({"status", "role", "type"})


@dataclass
class Activity:
    """Messages sent to each agent (by uid) through this server since it started: the handle's
    ``lastActivityAt`` and the metrics' ``messageCount``."""

    last: dict[str, str] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def sent(self, agent: Agent) -> None:
        uid = agent.metadata.uid
        self.last[uid] = now_iso()
        self.count[uid] = self.count.get(uid, 0) + 1

    def forget(self, agent: Agent) -> None:
        self.last.pop(agent.metadata.uid, None)
        self.count.pop(agent.metadata.uid, None)


ACTIVITY = web.AppKey("compat_activity", Activity)


def handle(request: web.Request, agent: Agent) -> dict[str, Any]:
    return handle_of(agent.to_manifest(), last_activity=request.app[ACTIVITY].last.get(agent.metadata.uid))


def compat_error(exc: Exception) -> web.Response:
    """The client's error shape: ``error`` a string (it shows it), with our code and field details."""
    api_error = translate_error(exc)
    return web.json_response(
        {"error": api_error.message, "code": api_error.code, "details": api_error.details}, status=api_error.status
    )


CompatHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def compat_errors(handler: CompatHandler) -> CompatHandler:
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = request.app[SETTINGS].max_body_bytes
            return compat_error(
                ApiError(413, "PAYLOAD_TOO_LARGE", f"request body is larger than the limit of {limit} bytes")
            )
        except web.HTTPException:
            raise
        except Exception as exc:
            try:
                return compat_error(exc)
            except Exception:
                raise exc from None

    return answer


async def read_config_json(request: web.Request) -> Any:
    """The JSON body; 415 unless it is sent as ``application/json`` (as the client does). A page in a
    browser cannot send that cross-site without a CORS preflight, which this API never grants."""
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"send the body as Content-Type: application/json, not {request.content_type or 'nothing'}",
        )
    return await read_json(request)


async def agent_by_id(request: web.Request) -> Agent:
    agent_id = request.match_info["id"]
    try:
        return await request.app[STORE].get(agent_id)
    except NotFound:
        raise ApiError(404, "NOT_FOUND", f"agent {agent_id!r} not found", [{"field": "id"}]) from None


HANDLE = openapi.answer("AgentHandle", "The agent")
ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"$ref": openapi.AGENT_NAME_PATH},
    "description": "the agent's id (its name)",
}
EXECUTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,256}$")
EXECUTION_ID = {
    "name": "executionId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": EXECUTION_ID_PATTERN.pattern},
}
SCHEMAS: dict[str, Any] = {
    "AgentHandle": {
        "type": "object",
        "description": "runtime-interface AgentHandle",
        "required": ["id", "name", "type", "status", "capabilities"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "type": {"enum": list(TYPES)},
            "status": {"enum": list(STATUSES)},
            "containerId": {"type": "string"},
            "role": {"type": "string"},
            "capabilities": {"type": "array", "items": {"type": "string"}},
            "startedAt": {"type": "string"},
            "lastActivityAt": {"type": "string"},
            "error": {"type": "string"},
            "exitCode": {"type": "integer"},
        },
    },
    "AgentConfig": {
        "type": "object",
        "description": "runtime-interface AgentConfig (workdir refused; idleTimeout, resources.timeout are lifecycle)",
        "required": ["name", "type"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "type": {"enum": list(TYPES)},
            "capabilities": {"type": "array", "items": {"type": "string"}},
            "role": {"type": "string"},
            "reportsTo": {"type": "string"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "credentials": {"type": "object"},
            "resources": {"type": "object"},
            "autoRestart": {"type": "boolean"},
            "executionId": {"type": "string"},
        },
    },
    "CompatError": {
        "type": "object",
        "required": ["error", "code"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}, "details": {"type": "array"}},
    },
}


def compat_errors_doc(*statuses: int) -> dict[str, Any]:
    """The error responses of a compat route: the client's shape, except 401, which the token check
    answers before any route (our own error shape)."""
    described = {
        str(s): {"description": "error", "content": {openapi.JSON: {"schema": openapi.ref("CompatError")}}}
        for s in statuses
        if s != 401
    }
    return {**(openapi.errors(401) if 401 in statuses else {}), **described}


@routes.get("/api/health")
@openapi.describe(
    "Parallax runtime client: health",
    responses={
        "200": openapi.answer("RuntimeHealth", "health"),
        **compat_errors_doc(401),
    },
    schemas={
        **SCHEMAS,
        "RuntimeHealth": {
            "type": "object",
            "required": ["healthy", "runtime"],
            "properties": {
                "healthy": {"type": "boolean"},
                "message": {"type": "string"},
                "runtime": {"type": "object"},
            },
        },
    },
)
@compat_errors
async def health(request: web.Request) -> web.Response:
    store, controller = request.app[STORE], request.app[CONTROLLER]
    problems = []
    try:
        await store.ping()
        agents = await store.list()
    except StoreError as exc:
        problems.append(f"store: {exc}")
        agents = []
    if not controller.docker_up:
        problems.append(f"Docker: {controller.docker_error or 'unreachable'}")
    if not controller.alive:
        problems.append("the reconcile loop is not running")
    active = sum(1 for a in agents if handle_of(a.to_manifest())["status"] in ACTIVE_STATUSES)
    body = {
        "healthy": not problems,
        "message": "; ".join(problems) if problems else f"Parallax Docker Runtime healthy, {active} active agents",
        "runtime": {"name": "docker", "type": "docker", "activeAgents": active},
    }
    return web.json_response(body)


def _list_filter(request: web.Request) -> Callable[[dict[str, Any]], bool]:
    query = request.query
    for key in sorted(set(query) - LIST_PARAMETERS):
        raise bad_parameter(key, "unknown parameter (status, role and type are)")
    statuses = query.getall("status", [])
    types = query.getall("type", [])
    roles = query.getall("role", [])
    for value in statuses:
        if value not in STATUSES:
            raise bad_parameter("status", f"must be one of {', '.join(STATUSES)}, not {value[:40]!r}")
    for value in types:
        if value not in TYPES:
            raise bad_parameter("type", f"must be one of {', '.join(TYPES)}, not {value[:40]!r}")
    if len(roles) > 1:
        raise bad_parameter("role", "give one role")

    def accept(h: dict[str, Any]) -> bool:
        return (
            (not statuses or h["status"] in statuses)
            and (not types or h["type"] in types)
            and (not roles or h.get("role") == roles[0])
        )

    return accept


@routes.get("/api/agents")
@openapi.describe(
    "Parallax runtime client: list agents",
    parameters=[
        openapi.query("status", {"enum": list(STATUSES)}, "only agents in this status (repeatable)"),
        openapi.query("type", {"enum": list(TYPES)}, "only agents of this type (repeatable)"),
        openapi.query("role", {"type": "string"}, "only agents of this role"),
    ],
    responses={
        "200": openapi.answer("AgentHandleList", "the agents"),
        **compat_errors_doc(400, 401, 503),
    },
    schemas={
        **SCHEMAS,
        "AgentHandleList": {
            "type": "object",
            "required": ["agents", "count"],
            "properties": {
                "agents": {"type": "array", "items": openapi.ref("AgentHandle")},
                "count": {"type": "integer"},
            },
        },
    },
)
@compat_errors
async def list_agents(request: web.Request) -> web.Response:
    accept = _list_filter(request)
    handles = [h for h in (handle(request, a) for a in await request.app[STORE].list()) if accept(h)]
    return web.json_response({"agents": handles, "count": len(handles)})


@routes.get("/api/agents/{id}")
@openapi.describe(
    "Parallax runtime client: one agent",
    parameters=[ID],
    responses={"200": HANDLE, **compat_errors_doc(401, 404, 503)},
    schemas=SCHEMAS,
)
@compat_errors
async def get_agent(request: web.Request) -> web.Response:
    return web.json_response(handle(request, await agent_by_id(request)))


@routes.post("/api/agents")
@openapi.describe(
    "Parallax runtime client: spawn an agent (records it; the controller starts it)",
    request_body=openapi.body("AgentConfig"),
    responses={
        "201": openapi.answer("AgentHandle", "Recorded, status starting"),
        **compat_errors_doc(400, 401, 403, 408, 409, 413, 415, 422, 503),
    },
    schemas=SCHEMAS,
)
@compat_errors
async def spawn(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    translated = to_agent_body(await read_config_json(request))
    try:
        agent, _ = admit(translated.body, settings, runtime_classes=await runtime_classes_for(request, translated.body))
    except AdmissionError as exc:
        raise translated.renamed(exc) from None
    try:
        created = await store.create(agent)
    except AlreadyExists as exc:
        raise ApiError(409, "ALREADY_EXISTS", f"id: {exc}", [{"field": "id", "message": str(exc)}]) from None
    return web.json_response(handle(request, created), status=201, headers={"Location": f"/api/agents/{created.name}"})


def _grace_seconds(request: web.Request) -> int | None:
    """``force`` (no grace: killed at once) or ``timeout`` (milliseconds of grace, as in StopOptions)."""
    if flag(request.query, "force"):
        return 0
    timeout_ms = integer(request.query, "timeout")
    if timeout_ms is None:
        return None
    seconds = -(-timeout_ms // 1000)
    if seconds > MAX_GRACE_SECONDS:
        raise bad_parameter("timeout", f"must be at most {MAX_GRACE_SECONDS * 1000} milliseconds")
    return seconds


async def _stop(request: web.Request, agent: Agent, grace: int | None) -> None:
    """Mark the agent deleted, with ``grace`` seconds between SIGTERM and SIGKILL when given (written in
    the same commit, so the controller never sees one without the other)."""
    store = request.app[STORE]
    if grace is None or grace == agent.spec.stop_grace_period_seconds or agent.metadata.deletion_timestamp:
        await store.mark_deleted(agent.name)
    else:
        wanted = Agent(agent.metadata, replace(agent.spec, stop_grace_period_seconds=grace), agent.status)
        await store.write_all([Write("replace", agent.name, wanted, planned_from=agent), Write("delete", agent.name)])
    request.app[ACTIVITY].forget(agent)


@routes.delete("/api/agents/{id}")
@openapi.describe(
    "Parallax runtime client: stop an agent (its record is marked deleted; the controller stops and removes it)",
    parameters=[
        ID,
        openapi.query("force", openapi.FLAG, "kill at once (no grace period)"),
        openapi.query("timeout", {"type": "string", "pattern": "^[0-9]+$"}, "grace period in milliseconds"),
    ],
    responses={"204": {"description": "stopping"}, **compat_errors_doc(400, 401, 404, 409, 503)},
    schemas=SCHEMAS,
)
@compat_errors
async def stop(request: web.Request) -> web.Response:
    grace = _grace_seconds(request)
    await _stop(request, await agent_by_id(request), grace)
    return web.Response(status=204)


@routes.post("/api/agents/{id}/restart")
@openapi.describe(
    "Parallax runtime client: restart an agent (its container is recreated)",
    parameters=[ID],
    responses={"200": HANDLE, **compat_errors_doc(401, 404, 409, 503)},
    schemas=SCHEMAS,
)
@compat_errors
async def restart(request: web.Request) -> web.Response:
    agent = await agent_by_id(request)
    return web.json_response(handle(request, await request_restart(request.app[STORE], agent.name)))


@dataclass(frozen=True)
class SendRequest:
    message: str
    expect_response: bool
    timeout_ms: float | None


def _send_request(body: Any) -> SendRequest:
    """A ``{message, expectResponse?, timeout?}`` body; 422 naming what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(422, "VALIDATION_FAILED", "the body must be an object", [{"field": "(body)"}])
    unknown = sorted(set(body) - {"message", "expectResponse", "timeout"})
    if unknown:
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            f"{unknown[0]}: unknown field",
            [{"field": k, "message": "unknown field"} for k in unknown],
        )
    message = body.get("message")
    if not isinstance(message, str) or message == "":
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            "message: must be a non-empty string",
            [{"field": "message", "message": "required"}],
        )
    expect = body.get("expectResponse")
    if expect is not None and not isinstance(expect, bool):
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            "expectResponse: must be true or false",
            [{"field": "expectResponse", "message": "must be a boolean"}],
        )
    timeout = body.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_ANSWER_WAIT_MS
    ):
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            f"timeout: must be a number of milliseconds, more than 0 and at most {MAX_ANSWER_WAIT_MS}",
            [{"field": "timeout", "message": "must be a number of milliseconds"}],
        )
    return SendRequest(message, bool(expect), timeout)


async def send_message(
    request: web.Request, agent_id: str, message: str, *, expect_response: bool = False, timeout_ms: float | None = None
) -> dict[str, Any] | None:
    """Deliver ``message`` to agent ``agent_id``'s stdin (``routes_live.deliver``), count it, and read its
    answer from the agent's output (``answers``); with ``expect_response``, wait for that answer (None
    when none came in time)."""
    try:
        agent = await request.app[STORE].get(agent_id)
    except NotFound:
        raise ApiError(404, "NOT_FOUND", f"agent {agent_id!r} not found", [{"field": "agentId"}]) from None
    info = await running_container(request, agent)
    if not info.running:
        raise ApiError(409, "NOT_RUNNING", f"agent {agent.name!r} is not running (phase {agent.phase})")
    answers = request.app[ANSWERS]
    future = await answers.expect(request, agent.name, info.id)
    if future is None and expect_response:
        raise ApiError(
            429,
            "TOO_MANY_STREAMS",
            "nothing was sent: the answer could not be read, every stream place is taken (PARALLAX_MAX_STREAMS)",
        )
    try:
        await deliver(request, agent, message)
    except BaseException:
        if future is not None:
            answers.unsent(info.id, future)
        raise
    request.app[ACTIVITY].sent(agent)
    return await wait_answer(future, timeout_ms) if expect_response else None


@routes.post("/api/agents/{id}/send")
@openapi.describe(
    "Parallax runtime client: send a message to the agent's stdin; with expectResponse, its answer",
    parameters=[ID],
    request_body=openapi.body("CompatSendRequest"),
    responses={
        "200": openapi.answer("CompatSendResult", "sent"),
        **compat_errors_doc(400, 401, 404, 408, 409, 413, 415, 422, 429, 502, 503),
    },
    schemas={
        **SCHEMAS,
        "CompatSendRequest": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "expectResponse": {"type": "boolean"},
                "timeout": {"type": "number", "description": "milliseconds to wait for the answer (30000)"},
            },
        },
        "CompatSendResult": {
            "type": "object",
            "required": ["sent"],
            "properties": {"sent": {"const": True}, "response": {"type": "object", "description": "AgentMessage"}},
        },
    },
)
@compat_errors
async def send(request: web.Request) -> web.Response:
    agent = await agent_by_id(request)
    wanted = _send_request(await read_config_json(request))
    if wanted.expect_response:
        release_slot(request)  # waiting for an agent's answer is not work
    answer = await until_gone(
        request,
        send_message(
            request, agent.name, wanted.message, expect_response=wanted.expect_response, timeout_ms=wanted.timeout_ms
        ),
    )
    return web.json_response({"sent": True} if answer is None else {"sent": True, "response": answer})


@routes.get("/api/agents/{id}/logs")
@openapi.describe(
    "Parallax runtime client: the agent's last output lines",
    parameters=[ID, openapi.query("tail", {"type": "string", "pattern": "^([0-9]+|all)$"}, "last N lines (100)")],
    responses={
        "200": openapi.answer("CompatLogs", "lines"),
        **compat_errors_doc(400, 401, 404, 409, 502, 503),
    },
    schemas={
        **SCHEMAS,
        "CompatLogs": {
            "type": "object",
            "required": ["logs", "count"],
            "properties": {"logs": {"type": "array", "items": {"type": "string"}}, "count": {"type": "integer"}},
        },
    },
)
@compat_errors
async def logs(request: web.Request) -> web.Response:
    for key in sorted(set(request.query) - {"tail"}):
        raise bad_parameter(key, "unknown parameter (tail is)")
    tail = parse_tail(request.query.get("tail"))
    lines = await log_lines(request, await agent_by_id(request), tail)
    return web.json_response({"logs": lines, "count": len(lines)})


@routes.get("/api/agents/{id}/metrics")
@openapi.describe(
    "Parallax runtime client: the agent's resource usage (404 when it is not running: the client's null)",
    parameters=[ID],
    responses={
        "200": openapi.answer("CompatMetrics", "usage"),
        **compat_errors_doc(401, 404, 502, 503),
    },
    schemas={
        **SCHEMAS,
        "CompatMetrics": {
            "type": "object",
            "properties": {
                "cpu": {"type": "number", "description": "percent"},
                "memory": {"type": "integer", "description": "bytes"},
                "uptime": {"type": "number", "description": "seconds"},
                "messageCount": {"type": "integer", "description": "messages sent through this server"},
            },
        },
    },
)
@compat_errors
async def metrics(request: web.Request) -> web.Response:
    agent = await agent_by_id(request)
    try:
        usage = await resource_usage(request, agent)
    except ApiError as exc:
        if exc.code != "NOT_RUNNING":
            raise
        raise ApiError(404, "NOT_RUNNING", f"{exc.message}: no metrics") from None
    body = {
        "cpu": usage["cpuPercent"],
        "memory": usage["memoryBytes"],
        "uptime": usage["uptimeSeconds"],
        "messageCount": request.app[ACTIVITY].count.get(agent.metadata.uid, 0),
    }
    return web.json_response(body)


@routes.delete("/api/executions/{executionId}/resources")
@openapi.describe(
    "Parallax runtime client: stop every agent of an execution",
    parameters=[EXECUTION_ID],
    responses={
        "202": openapi.answer("CompatCleanup", "the agents being stopped"),
        **compat_errors_doc(400, 401, 503),
    },
    schemas={
        **SCHEMAS,
        "CompatCleanup": {
            "type": "object",
            "required": ["executionId", "agents"],
            "properties": {"executionId": {"type": "string"}, "agents": {"type": "array", "items": {"type": "string"}}},
        },
    },
)
@compat_errors
async def cleanup_execution(request: web.Request) -> web.Response:
    execution_id = request.match_info["executionId"]
    if not EXECUTION_ID_PATTERN.fullmatch(execution_id):
        raise bad_parameter("executionId", "must be 1 to 256 letters, digits, '.', '_', ':' or '-'")
    store = request.app[STORE]
    stopping = []
    for agent in await store.list():
        if agent.metadata.annotations.get(ANNOTATION_EXECUTION_ID) != execution_id:
            continue
        try:
            await _stop(request, agent, None)
        except NotFound:
            continue
        stopping.append(agent.name)
    return web.json_response({"executionId": execution_id, "agents": stopping}, status=202)


@routes.get("/api")
@openapi.describe(
    "Parallax runtime client: what this server serves",
    responses={
        "200": {"description": "endpoints", "content": {openapi.JSON: {"schema": {"type": "object"}}}},
        **openapi.errors(401),
    },
)
async def service(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "service": "Parallax Docker Runtime",
            "endpoints": {"health": "/api/health", "agents": "/api/agents", "websocket": "/api/ws"},
        }
    )
