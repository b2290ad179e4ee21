"""``POST /apply``: declarative agents, like ``kubectl apply``. YAML (one or many ``---`` documents) or
JSON (one object or a list); ``?dryRun=true`` plans without writing; ``?prune=true&selector=app=x``
deletes the matching agents the set no longer contains. Nothing here calls Docker.

Also the lifecycle hook that owns the one ``Applier`` (shared with the ``--specs-dir`` follower).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from api.server import openapi
from api.server.errors import ApiError, read_body
from api.server.params import flag
from api.server.state import CONTROLLER, SETTINGS, STORE
from controller.apply.applier import Applier, ApplyReport
from controller.apply.specs_dir import SpecsDirFollower
from controller.apply.yaml_loader import Document, YamlError, expand_lists, load_documents, load_json_documents
from controller.model.agent import API_VERSION
from controller.model.selector import parse_selector

routes = web.RouteTableDef()

APPLIER = web.AppKey("applier", Applier)
FOLLOWER = web.AppKey("specs_dir_follower", SpecsDirFollower)

YAML_TYPES = {
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
    "text/plain",
    "application/octet-stream",
    "",
}
_STATUS_CODES = {
    207: "PARTIALLY_APPLIED",
    403: "FORBIDDEN",
    409: "CONFLICT",
    422: "VALIDATION_FAILED",
    503: "STORE_UNAVAILABLE",
}


_STATUS_BY_KIND = (("unavailable", 503), ("forbidden", 403), ("invalid", 422), ("conflict", 409))


def lifecycle(specs_dir: str | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry (after the store's): the applier, and the specs-dir follower if asked for."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        controller = app[CONTROLLER]
        applier = Applier(
            app[STORE],
            app[SETTINGS],
            controller.runtime.render,
            planner=controller.reconciler.plan,
            runtime_classes=controller.runtime.runtime_classes,
        )
        app[APPLIER] = applier
        follower = SpecsDirFollower(specs_dir, applier) if specs_dir else None
        if follower is not None:
            app[FOLLOWER] = follower
            await follower.start()
        try:
            yield
        finally:
            if follower is not None:
                await follower.stop()

    return context


async def _documents(request: web.Request) -> list[Document]:
    raw = await read_body(request)
    if not raw.strip():
        raise ApiError(400, "BAD_REQUEST", "request body is empty; send YAML or JSON Agent documents")
    content_type = request.content_type.lower()
    limit = request.app[SETTINGS].max_body_bytes
    try:
        if content_type == "application/json" or content_type.endswith("+json"):
            documents = load_json_documents(raw, max_bytes=limit)
        elif content_type in YAML_TYPES:
            documents = load_documents(raw, max_bytes=limit)
        else:
            raise ApiError(
                415, "UNSUPPORTED_MEDIA_TYPE", f"send application/yaml or application/json, not {content_type}"
            )
    except YamlError as exc:
        first = exc.problems[0]
        kind = "JSON" if content_type.endswith("json") else "YAML"
        raise ApiError(
            400,
            "MALFORMED_JSON" if kind == "JSON" else "INVALID_YAML",
            f"the {kind} cannot be read: {first}",
            [{**p.to_dict(), "field": p.field or "(body)"} for p in exc.problems],
        ) from exc
    documents = expand_lists(documents)
    if not documents:
        raise ApiError(400, "BAD_REQUEST", "the body holds no documents; send at least one Agent")
    return documents


@routes.post("/apply")
@openapi.describe(
    "Declarative apply of one or many Agent documents (YAML or JSON), like kubectl apply",
    parameters=[
        openapi.query("dryRun", openapi.FLAG, "plan only; write nothing"),
        openapi.query("atomic", openapi.FLAG, "all documents or none (default true)"),
        openapi.query("prune", openapi.FLAG, "delete agents matching selector that the set no longer contains"),
        openapi.query("selector", {"type": "string"}, "label selector for prune"),
    ],
    request_body={
        "required": True,
        "content": {
            openapi.JSON: {
                "schema": {"anyOf": [openapi.ref("ApplyInput"), {"type": "array", "items": openapi.ref("ApplyInput")}]}
            },
            "application/yaml": {"schema": {"type": "string"}},
        },
    },
    responses={
        "200": openapi.answer("ApplyResult", "Applied (or planned)"),
        "207": openapi.answer("ApplyResult", "Some documents were applied, some failed"),
        "403": openapi.answer("ApplyResult", "Refused by the security policy; nothing applied"),
        "409": openapi.answer("ApplyResult", "Conflicts with the store; nothing applied"),
        "422": openapi.answer("ApplyResult", "Invalid documents; nothing applied"),
        **openapi.errors(400, 401, 408, 413, 415, 503),
    },
    schemas={
        "ApplyInput": {"anyOf": [openapi.ref("ApplyAgent"), openapi.ref("ApplyFlatAgent")]},
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
                "error": openapi.ERROR["properties"]["error"],
            },
        },
    },
)
async def apply(request: web.Request) -> web.Response:
    dry_run = flag(request.query, "dryRun")
    atomic = flag(request.query, "atomic", default=True)
    prune = flag(request.query, "prune")
    selector_text = request.query.get("selector", request.query.get("labelSelector", "")).strip()
    if prune and not selector_text:
        raise ApiError(
            400,
            "BAD_REQUEST",
            "prune needs a label selector (?selector=app=x): without one it would delete every agent not in this set",
            [{"field": "selector", "message": "required when prune=true"}],
        )
    if selector_text and not prune:
        raise ApiError(
            400,
            "BAD_REQUEST",
            "a selector is only used with prune=true",
            [{"field": "selector", "message": "only with prune=true"}],
        )
    selector = parse_selector(selector_text)
    documents = await _documents(request)
    report = await request.app[APPLIER].apply(
        documents,
        dry_run=dry_run,
        atomic=atomic,
        prune=(lambda agent: selector(agent.metadata.labels)) if prune else None,
        prune_cause=f"not in the applied set, and matches the selector {selector_text}",
    )
    return _response(report, len(documents))


def _response(report: ApplyReport, total: int) -> web.Response:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ApplyResult",
        "dryRun": report.dry_run,
        "results": [r.to_dict() for r in report.results],
        "pruned": [r.to_dict() for r in report.pruned],
        "summary": report.summary(),
    }
    if report.prune_skipped:
        body["pruneSkipped"] = report.prune_skipped
    failed = report.failed
    if not failed:
        return web.json_response(body)
    kinds = {e.kind for r in failed for e in r.errors}
    status = 207 if report.written else next(code for kind, code in _STATUS_BY_KIND if kind in kinds)
    first = failed[0]
    error = first.errors[0]
    where = f"document {first.index}" if first.index >= 0 else f"agent {first.name}"
    if first.name and first.index >= 0:
        where += f" ({first.name})"
    if error.line is not None:
        where += f" line {error.line}"
    message = f"{where}: {error.field + ': ' if error.field else ''}{error.message}"
    others = sum(len(r.errors) for r in failed) - 1
    if others:
        message += f" (and {others} more)"
    if status != 207:
        message += "; nothing was applied" if not report.dry_run else "; a real apply would write nothing"
    body["error"] = {
        "code": _STATUS_CODES[status],
        "message": message,
        "details": [{"index": r.index, "name": r.name, **e.to_dict()} for r in failed for e in r.errors],
    }
    return web.json_response(body, status=status)
