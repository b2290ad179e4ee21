"""The agents' sampled usage, for the dashboard: every running agent's latest CPU and memory
(``GET /metrics/agents``, or ``?watch=true`` for a Server-Sent Events stream of them after every sampling
round) and one agent's history over the last minutes (``GET /agents/{name}/metrics/history``).

Both answer from what ``controller.observe.stats_refresher`` already samples every
``PARALLAX_STATS_SECONDS``; nothing here asks Docker.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from api.server import openapi
from api.server.params import flag
from api.server.state import STATS, STORE

routes = web.RouteTableDef()

POINT = {
    "type": "object",
    "required": ["time", "containerId", "cpuPercent", "memoryBytes", "memoryLimitBytes"],
    "properties": {
        "time": {"type": "number", "description": "Unix seconds"},
        "containerId": {"type": "string"},
        "cpuPercent": {"type": ["number", "null"], "description": "percent of one core; null for a first sample"},
        "memoryBytes": {"type": "integer", "description": "working set"},
        "memoryLimitBytes": {"type": "integer"},
    },
}


def _fleet(request: web.Request) -> dict[str, Any]:
    refresher = request.app[STATS]
    items = [{"agent": name, **point.to_dict()} for name, point in sorted(refresher.latest_points().items())]
    return {
        "apiVersion": "parallax.ai/v1",
        "kind": "AgentUsageList",
        "intervalSeconds": refresher.interval,
        "items": items,
    }


@routes.get("/metrics/agents")
@openapi.describe(
    "Every running agent's latest sampled CPU and memory; with watch=true, a stream of them after every sampling",
    parameters=[openapi.query("watch", openapi.FLAG, "stream a list after every sampling round", blocking=True)],
    responses={
        "200": {
            "description": "the latest samples (an SSE stream of USAGE items with watch=true)",
            "content": {openapi.JSON: {"schema": openapi.ref("AgentUsageList")}},
        },
        **openapi.errors(400, 401, 429),
    },
    schemas={
        "AgentUsage": {
            "allOf": [POINT, {"type": "object", "required": ["agent"], "properties": {"agent": {"type": "string"}}}]
        },
        "AgentUsageList": {
            "type": "object",
            "required": ["apiVersion", "kind", "intervalSeconds", "items"],
            "properties": {
                "apiVersion": {"const": "parallax.ai/v1"},
                "kind": {"const": "AgentUsageList"},
                "intervalSeconds": {"type": "number"},
                "items": {"type": "array", "items": openapi.ref("AgentUsage")},
            },
        },
    },
)
async def fleet_usage(request: web.Request) -> web.StreamResponse:
    if not flag(request.query, "watch"):
        return web.json_response(_fleet(request))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    # A client that went is found by the next write or by api.server.streams, which cancels this handler.
    while True:
        await response.write(f"event: USAGE\ndata: {json.dumps(_fleet(request))}\n\n".encode())
        await request.app[STATS].refreshed()


@routes.get("/agents/{name}/metrics/history")
@openapi.describe(
    "The agent's sampled CPU and memory over the last minutes (PARALLAX_STATS_SECONDS apart), oldest first",
    parameters=[openapi.NAME],
    responses={"200": openapi.answer("AgentUsageHistory", "the points"), **openapi.errors(401, 404, 503)},
    schemas={
        "AgentUsageHistory": {
            "type": "object",
            "required": ["agent", "intervalSeconds", "windowSeconds", "points"],
            "properties": {
                "agent": {"type": "string"},
                "intervalSeconds": {"type": "number"},
                "windowSeconds": {"type": "number"},
                "points": {"type": "array", "items": POINT},
            },
        }
    },
)
async def agent_usage_history(request: web.Request) -> web.Response:
    agent = await request.app[STORE].get(request.match_info["name"])
    refresher = request.app[STATS]
    return web.json_response(
        {
            "agent": agent.name,
            "intervalSeconds": refresher.interval,
            "windowSeconds": refresher.history_seconds,
            "points": [p.to_dict() for p in refresher.history(agent.name)],
        }
    )
