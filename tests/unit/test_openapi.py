"""The OpenAPI document (api/server/openapi.py), built from the descriptions each route module keeps beside its
handlers (``openapi.describe``)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from api.server import openapi
from api.server.app import make_app
from api.server.auth import is_open
from api.server.params import parse_flag
from api.server.state import SETTINGS
from controller.config import Settings


def _document(**settings: Any) -> tuple[web.Application, dict[str, Any]]:
    app = make_app(dataclasses.replace(Settings.from_env({}), **settings), run_controller=False)
    return app, openapi.build_openapi(app[SETTINGS], openapi.app_routes(app))


def test_every_route_of_the_app_is_described_by_its_route_module():
    app, document = _document()
    for method, path, _ in openapi.app_routes(app):
        operation = document["paths"][path][method]
        assert "x-parallax-undocumented" not in operation, (method, path)
        assert operation["summary"] and operation["responses"], (method, path)


def test_every_schema_an_operation_refers_to_is_in_the_document():
    _, document = _document()
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                refs.add(ref.rsplit("/", 1)[1])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs and refs <= set(document["components"]["schemas"])


@pytest.mark.parametrize("metrics_auth", [True, False])
def test_operations_without_a_token_are_the_ones_auth_lets_through(metrics_auth: bool):
    app, document = _document(metrics_auth=metrics_auth)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert (operation.get("security") == []) == is_open(path, app[SETTINGS]), (method, path)
    assert (document["paths"]["/metrics"]["get"].get("security") == []) is not metrics_auth


def test_a_route_nobody_described_is_marked_undocumented():
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    document = openapi.build_openapi(Settings(), [("get", "/things/{thing}", handler)])
    operation = document["paths"]["/things/{thing}"]["get"]
    assert operation["x-parallax-undocumented"] is True
    assert [p["name"] for p in operation["parameters"]] == ["thing"]


def test_two_different_schemas_under_one_name_are_refused():
    @openapi.describe("one", responses={}, schemas={"Thing": {"type": "string"}})
    async def one(request: web.Request) -> web.Response:
        return web.Response()

    @openapi.describe("two", responses={}, schemas={"Thing": {"type": "integer"}})
    async def two(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(ValueError, match="Thing"):
        openapi.build_openapi(Settings(), [("get", "/one", one), ("get", "/two", two)])


FLAG_SPELLINGS = ["", "true", "TRUE", "True", "1", "yes", "YeS", "false", "FALSE", "0", "no", "No"]


@pytest.mark.parametrize("raw", [*FLAG_SPELLINGS, "maybe", "on", "t", "2", " true", "true\n", "truefalse", "yesno"])
def test_the_documented_flag_is_what_the_parser_takes(raw: str):
    assert (re.fullmatch(openapi.FLAG["pattern"], raw) is not None) == (parse_flag(raw) is not None)


@given(st.text(max_size=8) | st.sampled_from(FLAG_SPELLINGS))
def test_the_documented_flag_is_what_the_parser_takes_for_any_text(raw: str):
    assert (re.fullmatch(openapi.FLAG["pattern"], raw) is not None) == (parse_flag(raw) is not None)


def test_streams_document_429_and_watches_their_resource_version_refusal():
    _, document = _document()
    paths = document["paths"]
    for path, method in [("/events", "get"), ("/ws", "get"), ("/agents", "get"), ("/agents/{name}/logs", "get")]:
        assert "429" in paths[path][method]["responses"], path
    assert "Retry-After" in document["components"]["responses"]["E429"]["headers"]
    for path in ("/events", "/ws", "/agents"):
        operation = paths[path]["get"]
        assert "RESOURCE_VERSION_TOO_LARGE" in operation["responses"]["400"]["description"], path
        assert {"resourceVersion", "Last-Event-ID"} <= {p["name"] for p in operation["parameters"]}, path
