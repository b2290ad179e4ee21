"""``/agents``: create, list, read, replace, patch and delete Agent records. Nothing here calls Docker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from aiohttp import web

from api.server import openapi
from api.server.errors import ApiError, read_json
from api.server.params import bad_parameter, flag, integer, number
from api.server.routes_watch import WATCH_REFUSED, resume_parameters, watch_over_sse
from api.server.state import RUNTIME, SETTINGS, STORE
from api.server.streams import until_gone
from api.server.throttle import release_slot
from controller.admission.admit import admit, asks_for_gvisor, mentions_volumes
from controller.admission.schema import flat_to_manifest, is_manifest
from controller.model.agent import PHASES, TYPES, Agent, keep_stored_secrets
from controller.model.selector import parse_selector
from controller.store.interface import Change, CutOff, Subscription

routes = web.RouteTableDef()

SETTLED_PHASES = {"Running", "Paused", "Succeeded", "Failed", "CrashLoopBackOff", "Suspended"}
DEFAULT_WAIT_SECONDS = 60.0
MAX_WAIT_SECONDS = 600.0

AGENT = openapi.answer("Agent", "The agent (env values redacted)")
WAIT = openapi.query("wait", openapi.FLAG, "answer once the agent has settled (or is gone, for DELETE)", blocking=True)
TIMEOUT = openapi.query(
    "timeout", {"type": "number", "exclusiveMinimum": 0, "maximum": 600}, "seconds to wait (with wait=true)"
)
WRITE_ERRORS = (400, 401, 403, 404, 408, 409, 413, 422, 503)
AGENT_INPUT = {"AgentInput": {"anyOf": [openapi.ref("Agent"), openapi.ref("FlatAgent")]}}


def agent_json(agent: Agent) -> dict[str, Any]:
    return agent.to_manifest(redact=True)


def _wait_timeout(request: web.Request) -> float | None:
    wait = flag(request.query, "wait")
    seconds = number(request.query, "timeout", suffix="s")
    if seconds is not None and not 0 < seconds <= MAX_WAIT_SECONDS:
        raise bad_parameter("timeout", f"must be more than 0 and at most {MAX_WAIT_SECONDS:g} seconds")
    if not wait:
        return None
    return DEFAULT_WAIT_SECONDS if seconds is None else seconds


async def _wait_settled(changes: Subscription[Change], agent: Agent, timeout: float) -> Agent:
    """The agent as soon as it is running or has failed; its latest state when the timeout passes (or
    when the store's changes came too fast to follow: the subscription was cut off)."""
    latest = agent
    with contextlib.suppress(TimeoutError, CutOff):
        async with asyncio.timeout(timeout):
            while not (latest.phase in SETTLED_PHASES or latest.status.get("error")):
                change = await changes.get()
                if change.agent.name == agent.name and change.agent.metadata.uid == agent.metadata.uid:
                    latest = change.agent
                    if change.type == "DELETED":
                        break
    return latest


async def _wait_purged(changes: Subscription[Change], agent: Agent, timeout: float) -> Agent | None:
    """The agent's record as it was purged, or None when the timeout passes first (or the subscription
    was cut off)."""
    with contextlib.suppress(TimeoutError, CutOff):
        async with asyncio.timeout(timeout):
            while True:
                change = await changes.get()
                if change.type == "DELETED" and change.agent.metadata.uid == agent.metadata.uid:
                    return change.agent
    return None


@routes.post("/agents")
@openapi.describe(
    "Create an agent (flat body or manifest)",
    parameters=[WAIT, TIMEOUT],
    request_body=openapi.body("AgentInput"),
    responses={"201": openapi.answer("Agent", "Created"), **openapi.errors(400, 401, 403, 408, 409, 413, 422, 503)},
    schemas=AGENT_INPUT,
)
async def create_agent(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    wait = _wait_timeout(request)
    body = await read_json(request)
    agent, _ = admit(
        body,
        settings,
        others=await store.list() if mentions_volumes(body) else (),
        runtime_classes=await runtime_classes_for(request, body),
    )
    changes = store.subscribe(agent.name) if wait is not None else None
    try:
        created = await store.create(agent)
        if changes is not None and wait is not None:
            release_slot(request)  # waiting is not work: short requests must not queue behind it
            created = await until_gone(request, _wait_settled(changes, created, wait))
    finally:
        if changes is not None:
            store.unsubscribe(changes)
    return web.json_response(agent_json(created), status=201, headers={"Location": f"/agents/{created.name}"})


@routes.get("/agents")
@openapi.describe(
    "List agents",
    parameters=[
        openapi.SELECTOR,
        openapi.query("type", {"enum": list(TYPES)}, "only agents of this type"),
        openapi.query("phase", {"enum": list(PHASES)}, "only agents in this phase"),
        openapi.query("watch", openapi.FLAG, "stream changes as Server-Sent Events instead of listing", blocking=True),
        openapi.query("name", {"type": "string"}, "with watch: only this agent"),
        *resume_parameters(blocking=True),
    ],
    responses={
        "200": {
            "description": "The agents; with watch=true, a stream of ADDED/MODIFIED/DELETED items",
            "content": {
                openapi.JSON: {"schema": openapi.ref("AgentList")},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        "400": WATCH_REFUSED,
        **openapi.errors(401, 429, 503),
    },
    schemas={"AgentList": openapi.list_of("AgentList", "Agent")},
)
async def list_agents(request: web.Request) -> web.StreamResponse:
    if flag(request.query, "watch"):
        return await watch_over_sse(request, with_agent_events=False, synthetic=True)
    store = request.app[STORE]
    selector = parse_selector(request.query.get("labelSelector", request.query.get("selector", "")))
    type_filter = request.query.get("type")
    phase_filter = request.query.get("phase")
    if type_filter is not None and type_filter not in TYPES:
        raise ApiError(400, "BAD_REQUEST", f"type must be one of {', '.join(TYPES)}", [{"field": "type"}])
    if phase_filter is not None and phase_filter not in PHASES:
        raise ApiError(400, "BAD_REQUEST", f"phase must be one of {', '.join(PHASES)}", [{"field": "phase"}])
    items = [
        agent.manifest_json
        for agent in await store.list()
        if selector(agent.metadata.labels)
        and (not type_filter or agent.spec.type == type_filter)
        and (not phase_filter or agent.phase == phase_filter)
    ]
    body = '{"apiVersion": "parallax.ai/v1", "kind": "AgentList", "items": [' + ", ".join(items) + "]}"
    return web.Response(text=body, content_type="application/json")


@routes.get("/agents/{name}")
@openapi.describe(
    "Read an agent: metadata, spec (env values redacted) and status",
    parameters=[openapi.NAME],
    responses={"200": AGENT, **openapi.errors(401, 404, 503)},
)
async def get_agent(request: web.Request) -> web.Response:
    agent = await request.app[STORE].get(request.match_info["name"])
    return web.json_response(agent_json(agent))


@routes.put("/agents/{name}")
@openapi.describe(
    "Replace an agent; env values sent as <redacted> keep the stored ones",
    parameters=[openapi.NAME],
    request_body=openapi.body("AgentInput"),
    responses={"200": AGENT, **openapi.errors(*WRITE_ERRORS)},
    schemas=AGENT_INPUT,
)
async def replace_agent(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    name = request.match_info["name"]
    body = await read_json(request)
    agent, rv = admit(
        body,
        settings,
        name=name,
        others=await store.list() if mentions_volumes(body) else (),
        runtime_classes=await runtime_classes_for(request, body),
    )
    updated = await store.update(name, functools.partial(keep_stored_secrets, agent), expected_rv=rv)
    return web.json_response(agent_json(updated))


async def runtime_classes_for(request: web.Request, body: Any) -> frozenset[str] | None:
    """The engine's runtime classes when ``body`` may become a gvisor agent (only then is Docker asked)."""
    if not asks_for_gvisor(body, request.app[SETTINGS]):
        return None
    return await request.app[RUNTIME].runtime_classes()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@routes.patch("/agents/{name}")
@openapi.describe(
    "JSON merge patch of an agent",
    parameters=[openapi.NAME],
    request_body=openapi.body("MergePatch"),
    responses={"200": AGENT, **openapi.errors(*WRITE_ERRORS)},
    schemas={
        "MergePatch": {
            "type": "object",
            "description": (
                "RFC 7386 merge patch of an Agent, flat or manifest-shaped; the result is admitted like a PUT."
            ),
        }
    },
)
async def patch_agent(request: web.Request) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    name = request.match_info["name"]
    patch = await read_json(request)
    if not isinstance(patch, dict):
        raise ApiError(400, "BAD_REQUEST", "a merge patch must be a JSON object")
    if not is_manifest(patch):
        flat = flat_to_manifest(patch)
        patch = {key: flat[key] for key in ("metadata", "spec") if flat[key]}
    rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch.get("metadata"), dict) else None

    others = await store.list()
    classes = await runtime_classes_for(request, patch)

    def patched(current: Agent) -> Agent:
        base = current.to_manifest(redact=False)
        base.pop("status", None)
        base["metadata"] = {
            k: v for k, v in base["metadata"].items() if k in ("name", "labels", "annotations") and v is not None
        }
        agent, _ = admit(merge_patch(base, patch), settings, name=name, others=others, runtime_classes=classes)
        return keep_stored_secrets(agent, current)

    # Merged onto the latest version, queued writes included: concurrent patches all take effect.
    updated = await store.update(name, patched, expected_rv=str(rv) if rv is not None else None)
    return web.json_response(agent_json(updated))


@routes.delete("/agents/{name}")
@openapi.describe(
    "Delete an agent: its container is stopped and removed, then the record",
    parameters=[
        openapi.NAME,
        openapi.query("resourceVersion", {"type": "string", "pattern": "^[0-9]+$"}, "delete only this version"),
        WAIT,
        TIMEOUT,
    ],
    responses={
        "200": openapi.answer("Agent", "Deleted (wait=true)"),
        "202": openapi.answer("Agent", "Marked for deletion"),
        **openapi.errors(400, 401, 404, 409, 503),
    },
)
async def delete_agent(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    rv = integer(request.query, "resourceVersion")
    wait = _wait_timeout(request)
    changes = store.subscribe(name) if wait is not None else None
    try:
        agent = await store.mark_deleted(name, expected_rv=None if rv is None else str(rv))
        if changes is not None and wait is not None:
            release_slot(request)  # waiting (a whole grace period, maybe) is not work
            gone = await until_gone(request, _wait_purged(changes, agent, wait))
            if gone is not None:
                return web.json_response(agent_json(gone), status=200)
    finally:
        if changes is not None:
            store.unsubscribe(changes)
    return web.json_response(agent_json(agent), status=202)
