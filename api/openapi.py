"""``GET /openapi.json``: the API as an OpenAPI 3.1 document.

The Agent schema is ``specs/agent.schema.json`` itself (OpenAPI 3.1 schemas are JSON Schema 2020-12),
with its ``$defs`` moved under ``components``; nothing about an Agent is written twice. Every route the
application has appears: those described below in full, any other with an ``x-parallax-undocumented``
mark, so a new route is visible here before someone describes it.

Operations and parameters that hold the connection open (SSE, WebSocket, ``follow``, ``watch``, ``wait``)
carry ``x-parallax-blocking: true`` so a fuzzer can leave them out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from api.state import SETTINGS
from controller.apply import SERVER_SET_METADATA
from controller.config import Settings
from controller.model import PHASES, TYPES
from controller.schema import load_schema

routes = web.RouteTableDef()

JSON = "application/json"
AGENT_NAME_PATH = "#/components/schemas/AgentName"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                re.sub(r"^#/\$defs/(\w+)$", lambda m: f"#/components/schemas/Agent{m.group(1).capitalize()}", value)
                if key == "$ref" and isinstance(value, str)
                else _rewrite_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def agent_schemas() -> dict[str, Any]:
    """``Agent`` (the manifest), ``FlatAgent`` (the seed's flat body) and the Agent's ``$defs``."""
    schema = copy.deepcopy(load_schema())
    defs = schema.pop("$defs", {})
    schema.pop("$schema", None)
    schema.pop("$id", None)
    schemas: dict[str, Any] = {f"Agent{name.capitalize()}": _rewrite_refs(body) for name, body in defs.items()}
    schemas["Agent"] = _rewrite_refs(schema)
    metadata = defs["metadata"]["properties"]
    flat_properties = {key: metadata[key] for key in ("name", "labels", "annotations", "resourceVersion")}
    flat_properties.update(defs["spec"]["properties"])
    # POST /apply ignores server-set fields, so `parallax get -o yaml` output applies as it is.
    ignored = {"description": "set by the server; ignored by apply"}
    schemas["ApplyMetadata"] = copy.deepcopy(schemas["AgentMetadata"])
    schemas["ApplyMetadata"]["properties"].update({key: ignored for key in SERVER_SET_METADATA})
    schemas["ApplyAgent"] = copy.deepcopy(schemas["Agent"])
    schemas["ApplyAgent"]["properties"].update(metadata=_ref("ApplyMetadata"), status=ignored)
    schemas["FlatAgent"] = _rewrite_refs(
        {
            "type": "object",
            "description": "The seed's flat body: name, labels, annotations and every spec field at the top level.",
            "required": ["name", "type"],
            "additionalProperties": False,
            "properties": flat_properties,
        }
    )
    schemas["ApplyFlatAgent"] = copy.deepcopy(schemas["FlatAgent"])
    schemas["ApplyFlatAgent"]["properties"].update(resourceVersion=ignored, status=ignored)
    return schemas


ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": ["string", "null"]}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}

OTHER_SCHEMAS: dict[str, Any] = {
    "Error": ERROR,
    "AgentInput": {"anyOf": [_ref("Agent"), _ref("FlatAgent")]},
    "ApplyInput": {"anyOf": [_ref("ApplyAgent"), _ref("ApplyFlatAgent")]},
    "AgentList": {
        "type": "object",
        "required": ["apiVersion", "kind", "items"],
        "properties": {
            "apiVersion": {"const": "parallax.ai/v1"},
            "kind": {"const": "AgentList"},
            "items": {"type": "array", "items": _ref("Agent")},
        },
    },
    "MergePatch": {
        "type": "object",
        "description": "RFC 7386 merge patch of an Agent, flat or manifest-shaped; the result is admitted like a PUT.",
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
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
    "EventList": {
        "type": "object",
        "required": ["apiVersion", "kind", "items"],
        "properties": {
            "apiVersion": {"const": "parallax.ai/v1"},
            "kind": {"const": "EventList"},
            "items": {"type": "array", "items": _ref("Event")},
        },
    },
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
    },
    "ApplyResult": {
        "type": "object",
        "required": ["apiVersion", "kind", "dryRun", "results", "pruned", "summary"],
        "properties": {
            "apiVersion": {"const": "parallax.ai/v1"},
            "kind": {"const": "ApplyResult"},
            "dryRun": {"type": "boolean"},
            "results": {"type": "array", "items": {"type": "object"}},
            "pruned": {"type": "array", "items": {"type": "object"}},
            "summary": {"type": "object"},
            "pruneSkipped": {"type": "string"},
            "error": ERROR["properties"]["error"],
        },
    },
    "SendRequest": {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {"message": {"type": "string", "minLength": 1, "description": "one line for the agent's stdin"}},
    },
    "SendResult": {
        "type": "object",
        "required": ["agent", "containerId", "bytes"],
        "properties": {"agent": {"type": "string"}, "containerId": {"type": "string"}, "bytes": {"type": "integer"}},
    },
}

ERROR_MEANINGS = {
    400: "Malformed request: not JSON, nested too deeply, or a bad query parameter",
    401: "Missing or invalid bearer token",
    403: "Refused by the security policy; details name the field and the rule",
    404: "No such agent",
    408: "The request body did not arrive in time",
    409: "Conflict: duplicate name, stale resourceVersion, or the agent is not running",
    413: "Request body too large",
    415: "Unsupported request media type",
    422: "Invalid agent; details list every violation with its field path",
    502: "Docker refused the operation",
    503: "The store or the Docker daemon is unavailable",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema_name)}}}


def _query(name: str, schema: dict[str, Any], description: str, *, blocking: bool = False) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    parameter["description"] = description
    if blocking:
        parameter["x-parallax-blocking"] = True
    return parameter


NAME = {"name": "name", "in": "path", "required": True, "schema": {"$ref": AGENT_NAME_PATH}}
FLAG = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", ""]}
WAIT = _query("wait", FLAG, "answer once the agent has settled (or is gone, for DELETE)", blocking=True)
TIMEOUT = _query(
    "timeout", {"type": "number", "exclusiveMinimum": 0, "maximum": 600}, "seconds to wait (with wait=true)"
)
SELECTOR = _query("labelSelector", {"type": "string"}, "label selector, e.g. team=research,env!=prod")
WRITE_ERRORS = (400, 401, 403, 404, 408, 409, 413, 422, 503)


def _body(schema_name: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(schema_name)}}}


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    agent = _json("Agent", "The agent (env values redacted)")
    return {
        ("get", "/healthz"): {
            "summary": "Liveness: the process answers",
            "security": [],
            "responses": {"200": _json("Health", "alive")},
        },
        ("get", "/readyz"): {
            "summary": "Readiness: store, Docker and the controller loops all work",
            "security": [],
            "responses": {"200": _json("Readiness", "ready"), "503": _json("Readiness", "not ready")},
        },
        ("get", "/metrics"): {
            "summary": "The controller's Prometheus metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_errors(401),
            },
        },
        ("get", "/openapi.json"): {
            "summary": "This document",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}},
                **_errors(401),
            },
        },
        ("post", "/agents"): {
            "summary": "Create an agent (flat body or manifest)",
            "parameters": [WAIT, TIMEOUT],
            "requestBody": _body("AgentInput"),
            "responses": {"201": _json("Agent", "Created"), **_errors(400, 401, 403, 408, 409, 413, 422, 503)},
        },
        ("get", "/agents"): {
            "summary": "List agents",
            "parameters": [
                SELECTOR,
                _query("type", {"enum": list(TYPES)}, "only agents of this type"),
                _query("phase", {"enum": list(PHASES)}, "only agents in this phase"),
                _query("watch", FLAG, "stream changes as Server-Sent Events instead of listing", blocking=True),
                _query("name", {"type": "string"}, "with watch: only this agent"),
            ],
            "responses": {
                "200": {
                    "description": "The agents; with watch=true, a stream of ADDED/MODIFIED/DELETED items",
                    "content": {
                        JSON: {"schema": _ref("AgentList")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(400, 401, 503),
            },
        },
        ("get", "/agents/{name}"): {
            "summary": "Read an agent: metadata, spec (env values redacted) and status",
            "parameters": [NAME],
            "responses": {"200": agent, **_errors(401, 404, 503)},
        },
        ("put", "/agents/{name}"): {
            "summary": "Replace an agent; env values sent as <redacted> keep the stored ones",
            "parameters": [NAME],
            "requestBody": _body("AgentInput"),
            "responses": {"200": agent, **_errors(*WRITE_ERRORS)},
        },
        ("patch", "/agents/{name}"): {
            "summary": "JSON merge patch of an agent",
            "parameters": [NAME],
            "requestBody": _body("MergePatch"),
            "responses": {"200": agent, **_errors(*WRITE_ERRORS)},
        },
        ("delete", "/agents/{name}"): {
            "summary": "Delete an agent: its container is stopped and removed, then the record",
            "parameters": [
                NAME,
                _query("resourceVersion", {"type": "string", "pattern": "^[0-9]+$"}, "delete only this version"),
                WAIT,
                TIMEOUT,
            ],
            "responses": {
                "200": _json("Agent", "Deleted (wait=true)"),
                "202": _json("Agent", "Marked for deletion"),
                **_errors(400, 401, 404, 409, 503),
            },
        },
        ("post", "/apply"): {
            "summary": "Declarative apply of one or many Agent documents (YAML or JSON), like kubectl apply",
            "parameters": [
                _query("dryRun", FLAG, "plan only; write nothing"),
                _query("atomic", FLAG, "all documents or none (default true)"),
                _query("prune", FLAG, "delete agents matching selector that the set no longer contains"),
                _query("selector", {"type": "string"}, "label selector for prune"),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": {"anyOf": [_ref("ApplyInput"), {"type": "array", "items": _ref("ApplyInput")}]}},
                    "application/yaml": {"schema": {"type": "string"}},
                },
            },
            "responses": {
                "200": _json("ApplyResult", "Applied (or planned)"),
                "207": _json("ApplyResult", "Some documents were applied, some failed"),
                "403": _json("ApplyResult", "Refused by the security policy; nothing applied"),
                "409": _json("ApplyResult", "Conflicts with the store; nothing applied"),
                "422": _json("ApplyResult", "Invalid documents; nothing applied"),
                **_errors(400, 401, 408, 413, 415, 503),
            },
        },
        ("get", "/agents/{name}/logs"): {
            "summary": "The container's output",
            "parameters": [
                NAME,
                _query("tail", {"type": "string", "pattern": "^([0-9]+|all)$"}, "last N lines, or all"),
                _query("since", {"type": "string"}, "Unix seconds, RFC 3339, or a duration like 5m"),
                _query("timestamps", FLAG, "prefix lines with their time"),
                _query("follow", FLAG, "keep streaming new lines", blocking=True),
            ],
            "responses": {
                "200": {"description": "log lines", "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors(400, 401, 404, 409, 502, 503),
            },
        },
        ("get", "/agents/{name}/metrics"): {
            "summary": "The container's resource usage",
            "parameters": [NAME],
            "responses": {"200": _json("AgentMetrics", "usage"), **_errors(401, 404, 409, 502, 503)},
        },
        ("post", "/agents/{name}/restart"): {
            "summary": "Recreate the agent's container (a desired-state change, like kubectl rollout restart)",
            "parameters": [NAME],
            "responses": {"202": _json("Agent", "Restart requested"), **_errors(401, 404, 409, 503)},
        },
        ("post", "/agents/{name}/send"): {
            "summary": "Write a line to the agent's stdin",
            "parameters": [NAME],
            "requestBody": _body("SendRequest"),
            "responses": {"202": _json("SendResult", "Sent"), **_errors(400, 401, 404, 408, 409, 413, 422, 502, 503)},
        },
        ("get", "/agents/{name}/events"): {
            "summary": "The controller's events about an agent",
            "parameters": [NAME],
            "responses": {"200": _json("EventList", "events"), **_errors(401, 404, 503)},
        },
        ("get", "/events"): {
            "summary": "Agent changes and controller events as Server-Sent Events",
            "x-parallax-blocking": True,
            "parameters": [
                SELECTOR,
                _query("name", {"type": "string"}, "only this agent"),
                _query("resourceVersion", {"type": "string"}, "resume after this version"),
            ],
            "responses": {
                "200": {
                    "description": "an endless event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors(400, 401),
            },
        },
        ("get", "/ws"): {
            "summary": "Agent changes and controller events over a WebSocket",
            "x-parallax-blocking": True,
            "responses": {"101": {"description": "switching to the WebSocket protocol"}, **_errors(400, 401)},
        },
    }


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)(?::[^}]*)?\}", path)
    ]


def build_openapi(settings: Settings, routes_in_app: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The document for an app whose routes are ``(method, path)`` pairs."""
    documented = operations()
    if not settings.metrics_auth:
        documented[("get", "/metrics")]["security"] = []
    paths: dict[str, dict[str, Any]] = {}
    for method, path in sorted(set(routes_in_app)):
        operation = documented.get((method, path))
        if operation is None:
            operation = {
                "summary": "Not described in api/openapi.py yet",
                "x-parallax-undocumented": True,
                "parameters": _path_parameters(path),
                "responses": {"default": {"description": "see the route's code"}},
            }
        operation = {**copy.deepcopy(operation), "operationId": f"{method}_{path}"}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Parallax Docker Runtime",
            "version": "v1",
            "description": "Records the agents you want; a reconcile loop runs them as hardened Docker containers.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": {**agent_schemas(), **OTHER_SCHEMAS},
            "responses": {f"E{status}": _json("Error", meaning) for status, meaning in sorted(ERROR_MEANINGS.items())},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "PARALLAX_API_TOKEN"}},
        },
    }


def app_routes(app: web.Application) -> list[tuple[str, str]]:
    found = []
    for route in app.router.routes():
        method = route.method.lower()
        path = route.resource.canonical if route.resource is not None else ""
        if method in ("get", "post", "put", "patch", "delete") and path:
            found.append((method, path))
    return found


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app[SETTINGS], app_routes(request.app)))
