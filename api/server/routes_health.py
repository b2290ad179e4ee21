"""``/healthz`` (the process answers) and ``/readyz`` (store, Docker and the loops all work)."""

from __future__ import annotations

from aiohttp import web

from api.server import openapi
from api.server.state import CONTROLLER, LEADER, RUNTIME, STORE
from controller.model.errors import AgentError
from controller.store.interface import StoreError

routes = web.RouteTableDef()

HEALTH_SCHEMAS = {
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "leader": {
                "type": "object",
                "description": "Who runs the controller: this process (leading) or another (a standby)",
                "required": ["leading", "identity"],
                "properties": {
                    "leading": {"type": "boolean"},
                    "identity": {"type": "string"},
                    "holder": {
                        "type": ["object", "null"],
                        "properties": {
                            "identity": {"type": ["string", "null"]},
                            "address": {"type": ["string", "null"]},
                            "transitions": {"type": "integer"},
                        },
                    },
                },
            },
            "checks": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["ok"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    },
}


@routes.get("/healthz")
@openapi.describe(
    "Liveness: the process answers", responses={"200": openapi.answer("Health", "alive")}, schemas=HEALTH_SCHEMAS
)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
@openapi.describe(
    "Readiness: store, Docker and the controller loops all work",
    responses={"200": openapi.answer("Readiness", "ready"), "503": openapi.answer("Readiness", "not ready")},
    schemas=HEALTH_SCHEMAS,
)
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, dict[str, object]] = {}
    try:
        await request.app[STORE].ping()
        checks["store"] = {"ok": True}
    except StoreError as exc:
        checks["store"] = {"ok": False, "message": str(exc)}
    controller = request.app[CONTROLLER]
    leader = request.app[LEADER]
    leading = leader.leading
    if leading or controller.alive:
        checks["docker"] = (
            {"ok": True}
            if controller.docker_up
            else {"ok": False, "code": "SOCKET_ERROR", "message": controller.docker_error or "unreachable"}
        )
    else:  # a standby: its controller does not run, so ask Docker (its live views use it)
        try:
            await request.app[RUNTIME].ping()
            checks["docker"] = {"ok": True}
        except AgentError as exc:
            checks["docker"] = {"ok": False, "code": exc.code, "message": exc.message}
    # A standby is ready: it serves the whole API, and its controller starts when it is elected.
    checks["controller"] = {"ok": controller.alive if leading else True}
    ready = all(bool(check["ok"]) for check in checks.values())
    holder = leader.holder
    return web.json_response(
        {
            "status": "ok" if ready else "unavailable",
            "checks": checks,
            "leader": {
                "leading": leading,
                "identity": leader.identity,
                "holder": holder.to_dict() if holder is not None else None,
            },
        },
        status=200 if ready else 503,
    )
