"""A small synchronous HTTP client for the Parallax API, used by the ``parallax`` CLI.

Standard library only (``urllib``), so the CLI starts fast and needs no event loop. Every failure is a
``ClientError`` whose text is one line a person can act on: the server is unreachable, the token was
refused, or the server's own message with the field path it named.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.client import HTTPResponse
from typing import Any, cast

DEFAULT_SERVER = "http://127.0.0.1:3200"
SERVER_ENV = "PARALLAX_SERVER"
TOKEN_ENV = "PARALLAX_API_TOKEN"
DEFAULT_TIMEOUT = 30.0


class ClientError(Exception):
    """Something the user must hear about in one line."""


class ServerUnreachable(ClientError):
    pass


@dataclass
class ErrorAnswer(ClientError):
    """The server answered with an error (4xx/5xx): its code, message and field details. (The server's
    side of the same answer is ``api.server.errors.ApiError``.)"""

    status: int
    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)
    body: Any = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.message
        fields = [str(d["field"]) for d in self.details if isinstance(d, dict) and d.get("field")]
        missing = [f for f in fields if f not in text]
        if missing:
            text += f" (field {', '.join(str(f) for f in missing)})"
        return f"{text} [{self.status} {self.code}]"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ApiClient:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.server = (server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
        if not self.server.startswith(("http://", "https://")):
            self.server = "http://" + self.server
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout

    # --- plumbing -------------------------------------------------------------------------------

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None and v is not False}
        return self.server + path + ("?" + urllib.parse.urlencode(params) if params else "")

    def open(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
        timeout: float | None = -1.0,
        ok: tuple[int, ...] = (),
    ) -> HTTPResponse:
        """The open response (for streams); an error status raises ``ErrorAnswer`` unless listed in ``ok``."""
        headers = {"Accept": accept, "User-Agent": "parallax-cli"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url(path, query), data=body, headers=headers, method=method)
        try:
            response: HTTPResponse = urllib.request.urlopen(
                request, timeout=self.timeout if timeout == -1.0 else timeout
            )
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return cast(HTTPResponse, exc)  # an HTTPError is a readable response as well
            raise self._error_answer(exc.code, exc.headers, exc.read()) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except TimeoutError as exc:
            raise ServerUnreachable(f"the Parallax server at {self.server} did not answer in time ({exc})") from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None
        return response

    def call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = -1.0,
        ok: tuple[int, ...] = (),
    ) -> Response:
        """A whole request; error statuses raise ``ErrorAnswer`` unless listed in ``ok``."""
        if json_body is not None:
            body, content_type = json.dumps(json_body).encode(), "application/json"
        with self.open(method, path, query=query, body=body, content_type=content_type, timeout=timeout, ok=ok) as resp:
            try:
                return Response(resp.status, resp.headers, resp.read())
            except (ConnectionError, OSError) as exc:  # TimeoutError included
                raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> ServerUnreachable:
        text = getattr(reason, "strerror", None) or str(reason)
        return ServerUnreachable(
            f"cannot reach the Parallax server at {self.server} ({text}); is `parallax serve` running? "
            f"(set --server or {SERVER_ENV})"
        )

    def _error_answer(self, status: int, headers: Message, data: bytes) -> ErrorAnswer:
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code", "ERROR"))
            message = str(error.get("message", "")) or f"HTTP {status}"
            details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        else:
            code = "HTTP_ERROR"
            text = data.decode(errors="replace").strip().splitlines()
            message = text[0][:200] if text else f"HTTP {status}"
            details = []
        if status == 401:
            message += f"; pass --token or set {TOKEN_ENV}"
        return ErrorAnswer(status, code, message, details, body)

    # --- the API --------------------------------------------------------------------------------

    def list_agents(self, selector: str | None = None) -> list[dict[str, Any]]:
        items = self.call("GET", "/agents", query={"labelSelector": selector or None}).json().get("items", [])
        return list(items)

    def get_agent(self, name: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/agents/{_quote(name)}").json())

    def delete_agent(self, name: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/agents/{_quote(name)}").json())

    def list_secrets(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/secrets").json().get("items", []))

    def get_secret(self, name: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/secrets/{_quote(name)}").json())

    def create_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", "/secrets", json_body=body).json())

    def delete_secret(self, name: str) -> None:
        self.call("DELETE", f"/secrets/{_quote(name)}")

    def apply(
        self,
        documents: list[Any],
        *,
        dry_run: bool = False,
        prune: bool = False,
        selector: str | None = None,
        atomic: bool = True,
    ) -> tuple[int, dict[str, Any]]:
        """``POST /apply`` with JSON documents: the status and the result (errors included, not raised)."""
        query = {
            "dryRun": dry_run,
            "prune": prune,
            "selector": selector or None,
            "atomic": "false" if not atomic else None,
        }
        response = self.call("POST", "/apply", query=query, json_body=documents, ok=(207, 403, 409, 422))
        body = response.json()
        if not isinstance(body, dict) or "results" not in body:
            raise self._error_answer(response.status, response.headers, response.body)
        return response.status, body

    def restart(self, name: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/agents/{_quote(name)}/restart").json() or {})

    def send(self, name: str, message: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/agents/{_quote(name)}/send", json_body={"message": message}).json() or {})

    def set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        body = json.dumps({"paused": paused}).encode()
        answer = self.call("PATCH", f"/agents/{_quote(name)}", body=body, content_type="application/merge-patch+json")
        return dict(answer.json() or {})

    def keepalive(self, name: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/agents/{_quote(name)}/keepalive").json() or {})

    def metrics(self, name: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/agents/{_quote(name)}/metrics").json())

    def readiness(self) -> dict[str, Any]:
        """``GET /readyz``: the checks, and who leads (answered whether ready or not)."""
        return dict(self.call("GET", "/readyz", ok=(503,)).json() or {})

    def list_agent_events(self, name: str) -> list[dict[str, Any]] | None:
        """The agent's events (``GET /agents/{name}/events``), or None when this server has no such list."""
        response = self.call("GET", f"/agents/{_quote(name)}/events", ok=(404, 405))
        if response.status != 200:
            return None
        return list((response.json() or {}).get("items", []))

    def logs(
        self,
        name: str,
        *,
        tail: str | None = None,
        follow: bool = False,
        since: str | None = None,
        timestamps: bool = False,
    ) -> Iterator[str]:
        """Log lines as they come (``follow`` keeps the stream open until the container stops)."""
        query = {"tail": tail, "follow": follow, "since": since, "timestamps": timestamps}
        response = self.open(
            "GET", f"/agents/{_quote(name)}/logs", query=query, accept="text/plain", timeout=None if follow else -1.0
        )
        with response:
            for raw in response:
                yield raw.decode(errors="replace").rstrip("\n")

    def watch_agents(
        self, selector: str | None = None, name: str | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(type, agent)`` pairs from ``GET /agents?watch=true`` (SSE): first the current agents as
        ``ADDED``, then a ``BOOKMARK`` (with an empty agent), then changes. Raises ``WatchUnsupported``
        when the server answers with a plain list instead of a stream."""
        query = {"watch": "true", "labelSelector": selector or None, "name": name}
        response = self.open("GET", "/agents", query=query, accept="text/event-stream", timeout=None)
        with response:
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise WatchUnsupported("the server has no watch stream")
            for message_type, data in _sse_messages(response):
                try:
                    payload = json.loads(data)
                except ValueError:
                    continue
                kind = str(payload.get("type", message_type)) if isinstance(payload, dict) else message_type
                obj = payload.get("object") if isinstance(payload, dict) else None
                if kind == "ERROR":
                    message = (obj or {}).get("message", "the watch ended") if isinstance(obj, dict) else data
                    raise ClientError(f"watch interrupted: {message}")
                if kind == "BOOKMARK":
                    yield kind, {}
                elif kind in ("ADDED", "MODIFIED", "DELETED") and isinstance(obj, dict) and "metadata" in obj:
                    yield kind, obj


class WatchUnsupported(ClientError):
    pass


def _sse_messages(response: HTTPResponse) -> Iterator[tuple[str, str]]:
    """(type, data) of each message of a Server-Sent Events stream (the type is its ``event:`` field)."""
    message_type, data = "message", list[str]()
    for raw in response:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield message_type, "\n".join(data)
            message_type, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                message_type = value
            elif key == "data":
                data.append(value)


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _query_value(value: Any) -> str:
    if value is True:
        return "true"
    return str(value)
