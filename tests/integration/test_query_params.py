"""Query parameters of every endpoint, against the real app and Docker daemon.

- every integer-valued parameter (and ``timeout``, ``since``): never a 5xx, and a value that is not
  ASCII digits is a 400 naming the parameter (``str.isdigit`` accepted ``²``, which ``int`` refuses: 500);
- a watch from a resourceVersion newer than the store's is refused the same way on ``/events``,
  ``GET /agents?watch=true`` and ``/ws`` (it used to be accepted and then deliver lower versions);
- a request with an oversized header is answered 4xx and logged as one line, without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Controller
from tests.server_process import Server

pytestmark = pytest.mark.docker

# (method, path, extra query, parameter, kind): kind "integer" must be 1-18 ASCII digits (or empty);
# "tail" also takes "all"; "text" (timeout, since) must at least refuse what holds a non-ASCII character.
PARAMETERS: list[tuple[str, str, dict[str, str], str, str]] = [
    ("GET", "/events", {}, "resourceVersion", "integer"),
    ("GET", "/ws", {}, "resourceVersion", "integer"),
    ("GET", "/agents", {"watch": "true"}, "resourceVersion", "integer"),
    ("DELETE", "/agents/nobody", {}, "resourceVersion", "integer"),
    ("GET", "/agents/nobody/logs", {}, "tail", "tail"),
    ("GET", "/agents/nobody/logs", {}, "since", "text"),
    ("POST", "/agents", {"wait": "true"}, "timeout", "text"),
    ("DELETE", "/agents/nobody", {"wait": "true"}, "timeout", "text"),
]

ASCII_INTEGER = re.compile(r"[0-9]{1,18}")

non_ascii_digits = st.text(
    st.characters(categories=["Nd", "No", "Nl"], exclude_characters="0123456789"), min_size=1, max_size=4
)
values = st.one_of(
    non_ascii_digits,
    st.tuples(st.from_regex(r"\A[0-9]{0,3}\Z"), non_ascii_digits).map("".join),
    st.sampled_from(["²", "١٢", "\uff11\uff12", "-1", "+1", " 1", "1 ", "1_000", "0x10", "1e3", "inf", "9" * 30]),
    st.from_regex(r"\A[0-9]{1,40}\Z"),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12),
)


def _bad(kind: str, value: str) -> bool:
    """Whether ``value`` must be refused with a 400 naming the parameter."""
    if value == "":
        return False
    if kind == "integer":
        return not ASCII_INTEGER.fullmatch(value)
    if kind == "tail":
        return value != "all" and not ASCII_INTEGER.fullmatch(value)
    return not value.isascii()


async def _ask(controller: Controller, method: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
    assert controller.session is not None
    async with controller.session.request(method, controller.base_url + path, params=query) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, None  # a stream that opened: its status is enough


@pytest.fixture
async def api(start_controller: Callable[..., Awaitable[Controller]]) -> Controller:
    return await start_controller(max_streams=10000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
async def test_integer_query_parameters_never_5xx_and_name_themselves(api: Controller, value: str):
    for method, path, extra, name, kind in PARAMETERS:
        status, body = await _ask(api, method, path, {**extra, name: value})
        assert status < 500, (method, path, name, value, status, body)
        if _bad(kind, value):
            assert status == 400, (method, path, name, value, status, body)
            assert body["error"]["code"] == "BAD_REQUEST"
            assert body["error"]["details"][0]["field"] == name, body


async def test_the_reported_values_and_the_last_event_id_header(api: Controller):
    assert api.session is not None
    for path in ("/events", "/ws", "/agents?watch=true"):
        async with api.session.get(api.base_url + path, params={"resourceVersion": "²"}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["error"]["details"][0]["field"] == "resourceVersion", body
        async with api.session.get(api.base_url + path, headers={"Last-Event-ID": "\uff11\uff12"}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["error"]["details"][0]["field"] == "Last-Event-ID", body
    status, body = await _ask(api, "GET", "/agents/nobody/logs", {"tail": "²"})
    assert status == 400 and body["error"]["details"][0]["field"] == "tail", body


async def test_a_watch_from_a_future_resource_version_is_refused_everywhere(api: Controller):
    assert api.session is not None
    status, created = await api.request("POST", "/agents", {"name": "future", "type": "claude", "suspend": True})
    assert status == 201
    latest = int(created["metadata"]["resourceVersion"])
    future = str(latest + 1000)
    for path in ("/events", "/ws", "/agents?watch=true"):
        async with api.session.get(api.base_url + path, params={"resourceVersion": future}) as resp:
            body = await resp.json()
            assert resp.status == 400, (path, resp.status, body)
            assert body["error"]["code"] == "RESOURCE_VERSION_TOO_LARGE"
            assert body["error"]["details"][0]["field"] == "resourceVersion"
        async with api.session.get(api.base_url + path, headers={"Last-Event-ID": future}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["error"]["details"][0]["field"] == "Last-Event-ID", body
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.session.ws_connect(api.base_url + f"/ws?resourceVersion={future}")
    assert refused.value.status == 400

    # the version a write just answered is not "future", however soon the watch comes
    for i in range(20):
        status, made = await api.request("POST", "/agents", {"name": f"now-{i}", "type": "claude", "suspend": True})
        assert status == 201
        rv = made["metadata"]["resourceVersion"]
        async with api.session.get(api.base_url + "/events", params={"resourceVersion": rv}) as resp:
            assert resp.status == 200, await resp.text()
        ws = await api.session.ws_connect(api.base_url + f"/ws?resourceVersion={rv}")
        await ws.close()

    # and a watch from the latest version delivers only what comes after it
    async with api.session.get(api.base_url + "/events", params={"resourceVersion": rv}) as resp:
        assert resp.status == 200
        status, _ = await api.request("PATCH", "/agents/future", {"labels": {"x": "y"}})
        assert status == 200
        async with asyncio.timeout(10):
            while True:
                line = (await resp.content.readline()).decode()
                if line.startswith("data: "):
                    item = json.loads(line[6:])
                    assert int(item["resourceVersion"]) > int(rv), item
                    if item["type"] == "MODIFIED" and item["object"]["metadata"]["name"] == "future":
                        break


@pytest.mark.e2e
async def test_an_oversized_header_is_answered_4xx_and_logged_as_one_line(server_env: dict[str, str]):
    server = Server(server_env)
    await server.start()
    port = int(server_env["PORT"])
    before = server.output()
    statuses = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /agents HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            statuses.append(int((await reader.readline()).split()[1]))
        writer.close()
    async with aiohttp.ClientSession() as session, session.get(server.url + "/healthz") as resp:
        assert resp.status == 200
    await asyncio.sleep(0.5)
    logged = server.output()[len(before) :]
    # the harness's own probes (its last /readyz may be logged after ``before`` was read) are not counted
    probes = ("GET /healthz", "GET /readyz")
    lines = [line for line in logged.splitlines() if not any(p in line for p in probes) and line.strip()]
    print("\n" + "\n".join(lines[:3]))
    assert all(400 <= s < 500 for s in statuses), statuses
    assert "Traceback" not in logged and "Error handling request" not in logged, logged[:3000]
    # one line per request: the access log's (aiohttp's own record of it is a DEBUG line, off by default)
    assert len(lines) == 20, lines[:5]
    assert all('" 400 ' in line for line in lines), lines[:5]
