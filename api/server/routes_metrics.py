"""``GET /metrics``: the controller's own registry in Prometheus' text format (0.0.4, which every scraper reads)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from api.server import openapi
from api.server.state import CONTROLLER

routes = web.RouteTableDef()


@routes.get("/metrics")
@openapi.describe(
    "The controller's Prometheus metrics",
    responses={
        "200": {
            "description": "Prometheus text format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **openapi.errors(401),
    },
)
async def prometheus_metrics(request: web.Request) -> web.Response:
    body = request.app[CONTROLLER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
