"""``GET /openapi.json``: the API as an OpenAPI 3.1 document, and ``describe``, which each route module
uses to describe its operations right above their handlers.

The Agent schema is ``specs/agent.schema.json`` itself (OpenAPI 3.1 schemas are JSON Schema 2020-12),
with its ``$defs`` moved under ``components``; nothing about an Agent is written twice. Every route the
application has appears: those described with ``describe`` in full, any other with an
``x-parallax-undocumented`` mark, so a new route is visible here before someone describes it. Which
operations need no token is not written here: it is ``api.server.auth.is_open``, the rule the server applies.

Operations and parameters that hold the connection open (SSE, WebSocket, ``follow``, ``watch``, ``wait``)
carry ``x-parallax-blocking: true`` so a fuzzer can leave them out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from api.server.auth import is_open
from api.server.params import FALSE, TRUE
from api.server.state import SETTINGS
from controller.admission.schema import load_schema
from controller.apply.applier import SERVER_SET_METADATA
from controller.config import Settings

routes = web.RouteTableDef()

JSON = "application/json"
AGENT_NAME_PATH = "#/components/schemas/AgentName"


def list_of(kind: str, item: str) -> dict[str, Any]:
    """The schema of a ``{"apiVersion", "kind": <kind>, "items": [<item>...]}`` list."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "items"],
        "properties": {
            "apiVersion": {"const": "parallax.ai/v1"},
            "kind": {"const": kind},
            "items": {"type": "array", "items": ref(item)},
        },
    }


def ref(name: str) -> dict[str, str]:
    """A reference to the schema ``name`` under ``components``."""
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
    schemas["ApplyAgent"]["properties"].update(metadata=ref("ApplyMetadata"), status=ignored)
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

ERROR_MEANINGS = {
    400: "Malformed request: not JSON, nested too deeply, or a bad query parameter",
    401: "Missing or invalid bearer token",
    403: "Refused by the security policy; details name the field and the rule",
    404: "No such agent",
    408: "The request body did not arrive in time",
    409: "Conflict: duplicate name, stale resourceVersion, or the agent is not running",
    411: "A file upload without a Content-Length",
    413: "Request body too large",
    415: "Unsupported request media type",
    422: "Invalid agent; details list every violation with its field path",
    429: (
        "TOO_MANY_STREAMS: PARALLAX_MAX_STREAMS streams (followed logs, watches, /events, /ws, execs, file "
        "transfers) are open already, or TOO_MANY_EXECS in one agent; try again after Retry-After seconds"
    ),
    502: "Docker refused the operation",
    503: "The store or the Docker daemon is unavailable",
}


ERROR_HEADERS: dict[int, dict[str, Any]] = {
    429: {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}},
}


def _error_response(status: int, meaning: str) -> dict[str, Any]:
    response = answer("Error", meaning)
    if status in ERROR_HEADERS:
        response["headers"] = ERROR_HEADERS[status]
    return response


def errors(*statuses: int) -> dict[str, Any]:
    """Responses for error ``statuses``, each the shared ``Error`` answer with its usual meaning."""
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def answer(schema_name: str, description: str) -> dict[str, Any]:
    """A JSON response whose body is the schema ``schema_name``."""
    return {"description": description, "content": {JSON: {"schema": ref(schema_name)}}}


def body(schema_name: str) -> dict[str, Any]:
    """A required JSON request body of the schema ``schema_name``."""
    return {"required": True, "content": {JSON: {"schema": ref(schema_name)}}}


def query(name: str, schema: dict[str, Any], description: str, *, blocking: bool = False) -> dict[str, Any]:
    """An optional query parameter; ``blocking`` when setting it holds the connection open."""
    parameter: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    parameter["description"] = description
    if blocking:
        parameter["x-parallax-blocking"] = True
    return parameter


NAME = {"name": "name", "in": "path", "required": True, "schema": {"$ref": AGENT_NAME_PATH}}


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


# What api.server.params takes for a flag, in a pattern every JSON Schema dialect reads (no inline (?i) flag).
FLAG = {
    "type": "string",
    "pattern": "^(" + "|".join(_any_case(word) for word in sorted(TRUE | FALSE) if word) + ")?$",
    "description": "a flag: true for true, 1, yes or an empty value; false for false, 0, no; in any case",
}
SELECTOR = query("labelSelector", {"type": "string"}, "label selector, e.g. team=research,env!=prod")


@dataclass(frozen=True)
class Described:
    """One handler's operation, and the component schemas it refers to beyond the shared ones."""

    operation: dict[str, Any]
    schemas: dict[str, Any] = field(default_factory=dict)


_DESCRIBED: dict[Callable[..., Any], Described] = {}

H = TypeVar("H", bound=Callable[..., Any])


def describe(
    summary: str,
    *,
    responses: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    request_body: dict[str, Any] | None = None,
    blocking: bool = False,
    schemas: dict[str, Any] | None = None,
) -> Callable[[H], H]:
    """Decorator (under the route's): the OpenAPI operation the handler serves. ``schemas`` are the
    components its parameters, body and responses refer to, beyond the shared ones (the Agent's, Error);
    ``blocking`` when the operation always holds the connection open (SSE, WebSocket)."""
    operation: dict[str, Any] = {"summary": summary}
    if blocking:
        operation["x-parallax-blocking"] = True
    if parameters is not None:
        operation["parameters"] = parameters
    if request_body is not None:
        operation["requestBody"] = request_body
    operation["responses"] = responses

    def attach(handler: H) -> H:
        _DESCRIBED[handler] = Described(operation, dict(schemas or {}))
        return handler

    return attach


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)(?::[^}]*)?\}", path)
    ]


Route = tuple[str, str, Callable[..., Any]]


def build_openapi(settings: Settings, routes_in_app: Iterable[Route]) -> dict[str, Any]:
    """The document for an app whose routes are ``(method, path, handler)``: each handler's operation as
    ``describe`` recorded it, the components they use, and ``security: []`` where ``api.server.auth`` needs no
    token."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {**agent_schemas(), "Error": ERROR}
    for (method, path), handler in sorted({(method, path): handler for method, path, handler in routes_in_app}.items()):
        described = _DESCRIBED.get(handler)
        if described is None:
            operation: dict[str, Any] = {
                "summary": "Not described yet (see api.server.openapi.describe)",
                "x-parallax-undocumented": True,
                "parameters": _path_parameters(path),
                "responses": {"default": {"description": "see the route's code"}},
            }
        else:
            operation = copy.deepcopy(described.operation)
            for name, schema in described.schemas.items():
                if schemas.setdefault(name, schema) != schema:
                    raise ValueError(f"two different schemas are named {name!r} in the OpenAPI document")
        if is_open(path, settings):
            operation["security"] = []
        paths.setdefault(path, {})[method] = {**operation, "operationId": f"{method}_{path}"}
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
            "schemas": copy.deepcopy(schemas),
            "responses": {
                f"E{status}": _error_response(status, meaning) for status, meaning in sorted(ERROR_MEANINGS.items())
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "PARALLAX_API_TOKEN"}},
        },
    }


def app_routes(app: web.Application) -> list[Route]:
    found = []
    for route in app.router.routes():
        method = route.method.lower()
        path = route.resource.canonical if route.resource is not None else ""
        if method in ("get", "post", "put", "patch", "delete") and path:
            found.append((method, path, route.handler))
    return found


@routes.get("/openapi.json")
@describe(
    "This document",
    responses={
        "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}},
        **errors(401),
    },
)
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app[SETTINGS], app_routes(request.app)))
