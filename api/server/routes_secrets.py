"""``/secrets``: create, list, read, replace and delete Secret resources. Values go in, never out: a
Secret reads back as its keys, their versions and the agents that use it. Nothing here calls Docker."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.server import openapi
from api.server.errors import ApiError, read_json
from api.server.state import STORE
from controller.admission.secret import parse_secret
from controller.model.agent import Agent
from controller.model.secret import Secret, references

routes = web.RouteTableDef()

SECRET_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "maxLength": 253,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    },
}
SCHEMAS: dict[str, Any] = {
    "SecretInput": {
        "type": "object",
        "description": "Kubernetes' shape: data (base64 values) and/or stringData (text values); stringData wins.",
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "parallax.ai/v1"},
            "kind": {"const": "Secret"},
            "type": {"const": "Opaque"},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "name": SECRET_NAME["schema"],
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object"},
                    "uid": {"type": "string"},
                    "resourceVersion": {"type": "string"},
                    "creationTimestamp": {"type": ["string", "null"]},
                },
            },
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
            "stringData": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Secret": {
        "type": "object",
        "description": "A Secret as the API shows it: keys and versions, never values.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"const": "Secret"},
            "metadata": {"type": "object"},
            "keys": {
                "type": "object",
                "additionalProperties": {"type": "object", "properties": {"version": {"type": "integer"}}},
            },
            "version": {"type": "integer"},
            "usedBy": {"type": "array", "items": {"type": "string"}},
        },
    },
    "SecretList": {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"const": "SecretList"},
            "items": {"type": "array", "items": openapi.ref("Secret")},
        },
    },
}


def secret_json(secret: Secret, agents: list[Agent]) -> dict[str, Any]:
    return secret.to_public([agent.name for agent in agents if references(agent, secret.name)])


async def _admitted(request: web.Request, name: str | None = None) -> Secret:
    secret, errors = parse_secret(await read_json(request), name=name)
    if errors:
        raise ApiError(
            422,
            "VALIDATION_FAILED",
            "invalid secret: " + "; ".join(f"{e.field}: {e.message}" for e in errors),
            [e.to_dict() for e in errors],
        )
    return secret


@routes.post("/secrets")
@openapi.describe(
    "Create a Secret (values are sealed at rest and never returned)",
    request_body=openapi.body("SecretInput"),
    responses={"201": openapi.answer("Secret", "Created"), **openapi.errors(400, 401, 408, 409, 413, 422, 503)},
    schemas=SCHEMAS,
)
async def create_secret(request: web.Request) -> web.Response:
    store = request.app[STORE]
    created = await store.put_secret(await _admitted(request), create=True)
    return web.json_response(
        secret_json(created, await store.list()), status=201, headers={"Location": f"/secrets/{created.name}"}
    )


@routes.get("/secrets")
@openapi.describe(
    "List Secrets: keys, versions and the agents using each, never values",
    responses={"200": openapi.answer("SecretList", "The secrets"), **openapi.errors(401, 503)},
)
async def list_secrets(request: web.Request) -> web.Response:
    store = request.app[STORE]
    agents = await store.list()
    items = [secret_json(secret, agents) for secret in await store.list_secrets()]
    return web.json_response({"apiVersion": "parallax.ai/v1", "kind": "SecretList", "items": items})


@routes.get("/secrets/{name}")
@openapi.describe(
    "Read a Secret: keys, versions and the agents using it, never values",
    parameters=[SECRET_NAME],
    responses={"200": openapi.answer("Secret", "The secret"), **openapi.errors(401, 404, 503)},
)
async def get_secret(request: web.Request) -> web.Response:
    store = request.app[STORE]
    secret = await store.get_secret(request.match_info["name"])
    return web.json_response(secret_json(secret, await store.list()))


@routes.put("/secrets/{name}")
@openapi.describe(
    "Replace a Secret's data; the agents using a changed key are rolled (recreated with the new value)",
    parameters=[SECRET_NAME],
    request_body=openapi.body("SecretInput"),
    responses={"200": openapi.answer("Secret", "Replaced"), **openapi.errors(400, 401, 404, 408, 413, 422, 503)},
)
async def replace_secret(request: web.Request) -> web.Response:
    store = request.app[STORE]
    name = request.match_info["name"]
    updated = await store.put_secret(await _admitted(request, name), create=False)
    return web.json_response(secret_json(updated, await store.list()))


@routes.delete("/secrets/{name}")
@openapi.describe(
    "Delete a Secret, in use or not (as Kubernetes does): agents using it get SecretMissing, and their "
    "running containers are left as they are",
    parameters=[SECRET_NAME],
    responses={"204": {"description": "Deleted"}, **openapi.errors(401, 404, 503)},
)
async def delete_secret(request: web.Request) -> web.Response:
    await request.app[STORE].delete_secret(request.match_info["name"])
    return web.Response(status=204)
