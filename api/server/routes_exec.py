"""``POST /agents/{name}/exec`` (one answer, or ``?stream=true`` NDJSON frames) and
``GET /agents/{name}/exec/ws`` (a WebSocket with a terminal, stdin and resize): a command run inside a
running agent, as its user, inside its limits, without a shell.

The exec's env values are secrets: they are never answered, logged, or left in Docker's error text.
Execs take a stream's place (``api.server.streams``), not an API slot, so a long one never blocks the
API; when the client goes, the handler is cancelled and the command killed.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from api.server import openapi
from api.server.activity import note_activity
from api.server.errors import ApiError, error_response, read_json
from api.server.params import flag
from api.server.routes_live import running_container
from api.server.state import LIVE, SETTINGS, STORE
from controller.model.agent import Agent
from controller.model.agent_files import CappedOutput
from controller.model.errors import AgentError
from controller.model.secret import resolve_env
from controller.runtime.docker.live_work import EXEC_MARKER
from controller.runtime.interface import ExecCommand, ExecProcess, Instance
from controller.store.interface import NotFound, Store

routes = web.RouteTableDef()

DEFAULT_TIMEOUT_SECONDS = 60
MAX_ARGS = 1024
EXIT_CODE_WAIT_SECONDS = 2.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FIELDS = ("command", "env", "workdir", "timeoutSeconds", "stdin", "tty")


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "VALIDATION_FAILED", f"{field}: {message}", [{"field": field, "message": message}])


@dataclass(frozen=True)
class ExecRequest:
    command: ExecCommand
    timeout: float | None
    stdin: bytes | None


def parse_exec(body: Any, max_timeout: int, *, interactive: bool = False) -> ExecRequest:
    """An exec request body as an ``ExecRequest``, or a 422 naming the field. ``interactive`` (the
    WebSocket): ``tty`` is allowed, stdin comes as messages, and no timeout unless one is asked for."""
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_REQUEST", "the request body must be a JSON object")
    allowed = FIELDS if interactive else tuple(f for f in FIELDS if f != "tty")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _invalid(unknown[0], "unknown field")
    argv = body.get("command")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise _invalid("command", "must be a non-empty list of strings (argv; no shell is involved)")
    if len(argv) > MAX_ARGS or any("\x00" in a for a in argv):
        raise _invalid("command", f"at most {MAX_ARGS} arguments, none with a NUL")
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise _invalid("env", "must be an object of string values")
    for key, value in env.items():
        if not _ENV_NAME.match(key) or key == EXEC_MARKER:
            raise _invalid(
                f"env.{key[:64]}", "not a usable variable name" + (" (reserved)" if key == EXEC_MARKER else "")
            )
        if "\x00" in value:
            raise _invalid(f"env.{key}", "may not contain NUL")
    workdir = body.get("workdir", "")
    if not isinstance(workdir, str) or (workdir and not workdir.startswith("/")) or "\x00" in workdir:
        raise _invalid("workdir", "must be an absolute path")
    raw_timeout = body.get("timeoutSeconds", None if interactive else DEFAULT_TIMEOUT_SECONDS)
    timeout: float | None = None
    if raw_timeout is not None:
        if (
            isinstance(raw_timeout, bool)
            or not isinstance(raw_timeout, int | float)
            or not 0 < raw_timeout <= max_timeout
        ):
            raise _invalid(
                "timeoutSeconds",
                f"must be a number of seconds above 0 and at most {max_timeout} (PARALLAX_EXEC_MAX_TIMEOUT)",
            )
        timeout = float(raw_timeout)
    stdin = body.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise _invalid("stdin", "must be a string")
    tty = body.get("tty", False)
    if not isinstance(tty, bool):
        raise _invalid("tty", "must be true or false")
    command = ExecCommand(tuple(argv), dict(env), workdir, "", tty, stdin is not None or interactive)
    return ExecRequest(command, timeout, stdin.encode() if stdin is not None else None)


class ExecsBusy(ApiError):
    """Every exec place of an agent is taken: answered 429 with ``Retry-After``."""

    def response(self) -> web.Response:
        answer = error_response(self.status, self.code, self.message)
        answer.headers["Retry-After"] = "1"
        return answer


class ExecSlots:
    """At most ``limit`` execs (and file deletions) at once in each agent; one more is a 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: dict[str, int] = {}

    def take(self, agent: str) -> None:
        """One place for ``agent``; ``ExecsBusy`` (429 with Retry-After) when they are all taken."""
        if self.running.get(agent, 0) >= self.limit:
            raise ExecsBusy(
                429,
                "TOO_MANY_EXECS",
                f"{self.limit} commands already run in agent {agent!r} (PARALLAX_EXEC_CONCURRENCY); try again later",
            )
        self.running[agent] = self.running.get(agent, 0) + 1

    def give_back(self, agent: str) -> None:
        left = self.running.get(agent, 1) - 1
        if left:
            self.running[agent] = left
        else:
            self.running.pop(agent, None)


EXEC_SLOTS = web.AppKey("exec_slots", ExecSlots)


def setup_exec(app: web.Application) -> None:
    app[EXEC_SLOTS] = ExecSlots(app[SETTINGS].exec_concurrency)


def exec_slots(app: web.Application) -> ExecSlots:
    return app[EXEC_SLOTS]


async def running_instance(request: web.Request, name: str, *, wake: bool) -> tuple[Agent, Instance]:
    """The agent and its running instance; 404 unknown, 409 not running (naming the phase)."""
    store = request.app[STORE]
    await store.get(name)  # 404 first
    await note_activity(request.app, name, wake=wake)
    agent = await _with_secret_values(store, await store.get(name))
    info = await running_container(request, agent)
    if info.state != "running":
        raise ApiError(
            409, "NOT_RUNNING", f"agent {name!r} is not running (phase {agent.phase}, container {info.state})"
        )
    return agent, info


async def _with_secret_values(store: Store, agent: Agent) -> Agent:
    """``agent`` with its ``secretKeyRef`` values resolved, so that Docker's text is scrubbed of them as of
    inline values (this copy is never stored, rendered or shown)."""
    secrets = {}
    for ref in agent.spec.env_refs.values():
        with contextlib.suppress(NotFound):
            secrets[ref.name] = await store.get_secret(ref.name)
    return resolve_env(agent, secrets)[0]


def scrubbed(exc: AgentError, *envs: Mapping[str, str]) -> AgentError:
    merged: dict[str, str] = {}
    for env in envs:
        merged.update(env)
    return exc.scrub(merged)


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"


async def _feed_stdin(process: ExecProcess, data: bytes | None) -> None:
    """``data`` to the command's stdin, then EOF; a command that ended without reading it is no error."""
    if data is None:
        return
    with contextlib.suppress(ConnectionError, RuntimeError, OSError):
        if data:
            await process.write(data)
        await process.close_stdin()


async def exec_code(process: ExecProcess) -> int | None:
    """The exit code of an ended process (Docker may take a moment to have it)."""
    deadline = time.monotonic() + EXIT_CODE_WAIT_SECONDS
    while True:
        code = await process.exit_code()
        if code is not None or time.monotonic() > deadline:
            return code
        await asyncio.sleep(0.02)


EXEC_RESULT = {
    "type": "object",
    "required": ["exitCode", "stdout", "stderr", "timedOut", "durationMs", "truncated"],
    "properties": {
        "exitCode": {"type": ["integer", "null"], "description": "null when Docker could not say"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "stdoutEncoding": {"enum": ["utf-8", "base64"]},
        "stderrEncoding": {"enum": ["utf-8", "base64"]},
        "timedOut": {"type": "boolean", "description": "the timeout killed the command"},
        "durationMs": {"type": "integer"},
        "truncated": {"type": "boolean", "description": "output past PARALLAX_EXEC_OUTPUT_BYTES was dropped"},
        "stdoutBytes": {"type": "integer", "description": "bytes the command wrote to stdout, kept or not"},
        "stderrBytes": {"type": "integer"},
    },
}


@routes.post("/agents/{name}/exec")
@openapi.describe(
    "Run a command inside the running agent (argv, no shell), as its user and inside its limits",
    parameters=[
        openapi.NAME,
        openapi.query(
            "stream", openapi.FLAG, "answer NDJSON frames of stdout, stderr and the exit as they happen", blocking=True
        ),
    ],
    request_body=openapi.body("ExecRequest"),
    responses={
        "200": {
            "description": "the command ended (or, with stream, NDJSON frames)",
            "content": {
                "application/json": {"schema": openapi.ref("ExecResult")},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        **openapi.errors(400, 401, 404, 409, 413, 422, 429, 502, 503),
    },
    schemas={
        "ExecRequest": {
            "type": "object",
            "required": ["command"],
            "additionalProperties": False,
            "properties": {
                "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "secret values"},
                "workdir": {"type": "string"},
                "timeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "default": DEFAULT_TIMEOUT_SECONDS},
                "stdin": {"type": "string", "description": "written to the command's stdin, then closed"},
            },
        },
        "ExecResult": EXEC_RESULT,
    },
)
async def run_exec(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    settings = request.app[SETTINGS]
    stream = flag(request.query, "stream")
    wanted = parse_exec(await read_json(request), settings.exec_max_timeout_seconds)
    agent, info = await running_instance(request, name, wake=True)
    slots = exec_slots(request.app)
    try:
        slots.take(name)
    except ExecsBusy as busy:
        return busy.response()
    try:
        if stream:
            return await _streamed(request, agent, info, wanted)
        return web.json_response(await _answered(request, agent, info, wanted))
    except AgentError as exc:
        raise scrubbed(exc, agent.spec.env, wanted.command.env) from None
    finally:
        slots.give_back(name)


async def _run_to_end(
    process: ExecProcess, wanted: ExecRequest, output: Callable[[int, bytes], Awaitable[None]]
) -> tuple[bool, int | None]:
    """Feed stdin, hand each piece of output (stream 1 or 2, bytes) to ``output`` until the command ends
    or its timeout kills it: whether it timed out, and its exit code."""
    feeder = asyncio.create_task(_feed_stdin(process, wanted.stdin))
    timed_out = False
    try:
        async with asyncio.timeout(wanted.timeout):
            while (piece := await process.read()) is not None:
                await output(*piece)
    except TimeoutError:
        timed_out = True
        await process.kill()
    finally:
        feeder.cancel()
    return timed_out, await exec_code(process)


async def _answered(request: web.Request, agent: Agent, info: Instance, wanted: ExecRequest) -> dict[str, Any]:
    cap = request.app[SETTINGS].exec_output_bytes
    outputs = {1: CappedOutput(cap), 2: CappedOutput(cap)}
    started = time.monotonic()

    async def keep(stream: int, data: bytes) -> None:
        outputs[stream].add(data)

    async with request.app[LIVE].open_exec(info.id, wanted.command) as process:
        timed_out, code = await _run_to_end(process, wanted, keep)
    stdout, stdout_encoding = _text_or_base64(bytes(outputs[1].data))
    stderr, stderr_encoding = _text_or_base64(bytes(outputs[2].data))
    return {
        "exitCode": code,
        "stdout": stdout,
        "stderr": stderr,
        "stdoutEncoding": stdout_encoding,
        "stderrEncoding": stderr_encoding,
        "timedOut": timed_out,
        "durationMs": int((time.monotonic() - started) * 1000),
        "truncated": outputs[1].truncated or outputs[2].truncated,
        "stdoutBytes": len(outputs[1].data) + outputs[1].dropped,
        "stderrBytes": len(outputs[2].data) + outputs[2].dropped,
    }


class FrameText:
    """Output chunks of one stream as frame fields: text while it decodes as UTF-8 (a character split
    across chunks waits for its end), base64 for bytes that are not."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def fields(self, data: bytes) -> dict[str, str]:
        try:
            return {"data": self._decoder.decode(data)}
        except UnicodeDecodeError:
            self._decoder.reset()
            return {"dataBase64": base64.b64encode(data).decode()}


_STREAM_NAMES = {1: "stdout", 2: "stderr"}


async def _streamed(request: web.Request, agent: Agent, info: Instance, wanted: ExecRequest) -> web.StreamResponse:
    started = time.monotonic()
    texts = {1: FrameText(), 2: FrameText()}
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})

    async def send(stream: int, data: bytes) -> None:
        frame = {"stream": _STREAM_NAMES[stream], **texts[stream].fields(data)}
        if frame.get("data") != "":
            await response.write(json.dumps(frame).encode() + b"\n")

    async with request.app[LIVE].open_exec(info.id, wanted.command) as process:
        await response.prepare(request)
        timed_out, code = await _run_to_end(process, wanted, send)
    ended = {"exitCode": code, "timedOut": timed_out, "durationMs": int((time.monotonic() - started) * 1000)}
    await response.write(json.dumps({"exit": ended}).encode() + b"\n")
    await response.write_eof()
    return response


@routes.get("/agents/{name}/exec/ws")
@openapi.describe(
    "An interactive command inside the running agent over a WebSocket (terminal, stdin, resize)",
    blocking=True,
    parameters=[openapi.NAME],
    responses={"101": {"description": "switching to the WebSocket protocol"}, **openapi.errors(401, 404, 409, 429)},
)
async def exec_websocket(request: web.Request) -> web.WebSocketResponse:
    """Protocol: the client's first message is a text ExecRequest (``command``, ``env``, ``workdir``,
    ``tty``, ``timeoutSeconds``); then binary messages are stdin, text ``{"type": "resize", "rows", "cols"}``
    resizes the terminal and ``{"type": "eof"}`` closes stdin. The server sends binary messages whose first
    byte is the stream (1 stdout, 2 stderr; a terminal's output is all 1), then one text
    ``{"type": "exit", "exitCode", "timedOut"}`` (or ``{"type": "error", "error": {...}}``) and closes."""
    name = request.match_info["name"]
    settings = request.app[SETTINGS]
    agent, info = await running_instance(request, name, wake=True)
    slots = exec_slots(request.app)
    try:
        slots.take(name)
    except ExecsBusy as busy:
        return busy.response()  # type: ignore[return-value]
    ws = web.WebSocketResponse(heartbeat=30)
    try:
        await ws.prepare(request)
        first = await ws.receive(timeout=settings.body_timeout_seconds)
        try:
            if first.type != WSMsgType.TEXT:
                raise ApiError(400, "BAD_REQUEST", "the first message must be a JSON ExecRequest")
            try:
                body = json.loads(first.data)
            except ValueError as exc:
                raise ApiError(400, "MALFORMED_JSON", "the first message is not JSON") from exc
            wanted = parse_exec(body, settings.exec_max_timeout_seconds, interactive=True)
            await _interactive(request, ws, info, wanted, agent)
        except ApiError as exc:
            await ws.send_json(
                {"type": "error", "error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            )
        except AgentError as exc:
            clean = scrubbed(exc, agent.spec.env)
            await ws.send_json({"type": "error", "error": {"code": clean.code, "message": clean.message}})
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        slots.give_back(name)
        if not ws.closed and request.transport is not None and not request.transport.is_closing():
            await ws.close()
    return ws


async def _interactive(
    request: web.Request, ws: web.WebSocketResponse, info: Instance, wanted: ExecRequest, agent: Agent
) -> None:
    timed_out = False
    try:
        async with request.app[LIVE].open_exec(info.id, wanted.command) as process:

            async def pump_in() -> None:
                async for message in ws:
                    if message.type == WSMsgType.BINARY:
                        await process.write(message.data)
                    elif message.type == WSMsgType.TEXT:
                        control = json.loads(message.data)
                        if control.get("type") == "resize":
                            await process.resize(int(control.get("rows", 24)), int(control.get("cols", 80)))
                        elif control.get("type") == "eof":
                            await process.close_stdin()
                    elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                        break
                raise ConnectionResetError  # the client went: the command is killed on the way out

            async def pump_out() -> None:
                while (piece := await process.read()) is not None:
                    await ws.send_bytes(bytes([piece[0]]) + piece[1])

            reader = asyncio.create_task(pump_in())
            writer = asyncio.create_task(pump_out())
            try:
                async with asyncio.timeout(wanted.timeout):
                    done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done and not writer.done():
                    reader.result()
            except TimeoutError:
                timed_out = True
                await process.kill()
            finally:
                reader.cancel()
                await asyncio.wait({writer}, timeout=EXIT_CODE_WAIT_SECONDS)
                writer.cancel()
            code = await exec_code(process)
        await ws.send_json({"type": "exit", "exitCode": code, "timedOut": timed_out})
    except AgentError as exc:
        raise scrubbed(exc, agent.spec.env, wanted.command.env) from None
