"""The API's error model: ``{"error": {"code", "message", "details"}}`` with honest HTTP statuses."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from controller.admission import AdmissionError
from controller.errors import RESOLUTION, SOCKET_ERROR, AgentError
from controller.selector import SelectorError
from controller.store import AlreadyExists, Conflict, NotFound, StoreUnavailable

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


def _translate(exc: Exception) -> ApiError:
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
        return error_response(exc.status, code, exc.reason)
    except Exception as exc:
        try:
            api_error = _translate(exc)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "INTERNAL", "internal error (this is a bug; see the server log)")
        return error_response(api_error.status, api_error.code, api_error.message, api_error.details)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 400 with the position when it is not JSON."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "BAD_REQUEST", "request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "MALFORMED_JSON", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (RecursionError, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "MALFORMED_JSON", "request body is not valid JSON") from exc
