"""The API's error model: ``{"error": {"code", "message", "details"}}`` with honest HTTP statuses."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from api.server.state import SETTINGS
from controller.admission.admit import AdmissionError
from controller.model.errors import RESOLUTION, SOCKET_ERROR, AgentError
from controller.model.selector import SelectorError
from controller.runtime.interface import NotRunning
from controller.store.interface import AlreadyExists, Conflict, NotFound, StoreUnavailable

log = logging.getLogger("parallax.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return web.json_response(body, status=status)


def translate_error(exc: Exception) -> ApiError:
    """The ApiError an exception is answered as; the exception itself when it is no known error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AdmissionError):
        details = [e.to_dict() for e in exc.errors]
        if exc.forbidden:
            return ApiError(403, "FORBIDDEN", f"refused by policy: {exc}", details)
        return ApiError(422, "VALIDATION_FAILED", f"invalid agent: {exc}", details)
    if isinstance(exc, NotFound):
        return ApiError(404, "NOT_FOUND", str(exc))
    if isinstance(exc, AlreadyExists):
        return ApiError(409, "ALREADY_EXISTS", str(exc))
    if isinstance(exc, Conflict):
        return ApiError(409, "CONFLICT", str(exc))
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, "STORE_UNAVAILABLE", str(exc))
    if isinstance(exc, AgentError):
        if exc.code == SOCKET_ERROR:
            return ApiError(503, SOCKET_ERROR, f"{exc.message}. {RESOLUTION[SOCKET_ERROR]}")
        return ApiError(502, exc.code, exc.message)
    if isinstance(exc, NotRunning):
        return ApiError(409, "NOT_RUNNING", f"{exc}: the agent is not running")
    if isinstance(exc, SelectorError):
        return ApiError(400, "BAD_REQUEST", str(exc), [{"field": "labelSelector", "message": str(exc)}])
    raise exc


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app._client_max_size
        return error_response(413, "PAYLOAD_TOO_LARGE", f"request body is larger than the limit of {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status, "HTTP_ERROR")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        try:
            api_error = translate_error(exc)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "INTERNAL", "internal error (this is a bug; see the server log)")
        return error_response(api_error.status, api_error.code, api_error.message, api_error.details)


MAX_JSON_DEPTH = 32
MAX_JSON_ITEMS = 1024


def json_shape_problem(value: Any) -> str | None:
    """Why a parsed body is shaped unlike any request (too deep, too long a list or object), or None."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"request body is nested deeper than {MAX_JSON_DEPTH} levels"
            if len(node) > MAX_JSON_ITEMS:
                return f"request body has a list or object of more than {MAX_JSON_ITEMS} items"
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_body(request: web.Request) -> bytes:
    """The raw request body; 408 when a slow client does not deliver it within PARALLAX_BODY_TIMEOUT."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout_seconds):
            return await request.read()
    except TimeoutError as exc:
        raise ApiError(408, "REQUEST_TIMEOUT", "the request body did not arrive in time") from exc


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 400 when it is not JSON or is shaped unlike any request (see
    ``json_shape_problem``); 408 when a slow client does not deliver it in time."""
    raw = await read_body(request)
    if not raw.strip():
        raise ApiError(400, "BAD_REQUEST", "request body is empty; send a JSON object")
    try:
        value = json.loads(raw, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "MALFORMED_JSON", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (RecursionError, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "MALFORMED_JSON", "request body is not valid JSON") from exc
    problem = json_shape_problem(value)
    if problem:
        raise ApiError(400, "BAD_REQUEST", problem)
    return value
