"""``/healthz`` (the process answers) and ``/readyz`` (store, Docker and the loops all work)."""

from __future__ import annotations

from aiohttp import web

from api.state import CONTROLLER, STORE
from controller.store import StoreError

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, dict[str, object]] = {}
    try:
        await request.app[STORE].ping()
        checks["store"] = {"ok": True}
    except StoreError as exc:
        checks["store"] = {"ok": False, "message": str(exc)}
    controller = request.app[CONTROLLER]
    checks["docker"] = (
        {"ok": True}
        if controller.docker_up
        else {"ok": False, "code": "SOCKET_ERROR", "message": controller.docker_error or "unreachable"}
    )
    checks["controller"] = {"ok": controller.alive}
    ready = all(bool(check["ok"]) for check in checks.values())
    return web.json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
