"""``parallax exec NAME -- cmd args`` (``-it`` for a terminal) and ``parallax cp`` (files in and out of an
agent's workspace): the CLI side of ``api.server.routes_exec`` and ``routes_files``."""

from __future__ import annotations

import base64
import json
import os
import sys
import tarfile
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import click

from api.cli.client import ApiClient, _quote
from api.cli.commands import UsageProblem, _names, client_command

CHUNK_BYTES = 256 * 1024


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and send it to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (with -i: an interactive shell).")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE for the command (a secret: never shown).")
@click.option("-w", "--workdir", default=None, help="Directory to run it in.")
@click.option("--timeout", type=float, default=None, help="Seconds before the command is killed.")
@client_command
def exec_command(
    client: ApiClient,
    name: str,
    command: tuple[str, ...],
    interactive: bool,
    tty: bool,
    env: tuple[str, ...],
    workdir: str | None,
    timeout: float | None,
) -> None:
    """Run COMMAND inside agent NAME (argv as given, no shell): parallax exec NAME -- ls -la /workspace.
    Its stdout and stderr are printed as they come; parallax exits with its exit code."""
    name = _names((name,))[0]
    argv = list(command[1:] if command[:1] == ("--",) else command)
    if not argv:
        raise UsageProblem("no command: parallax exec NAME -- COMMAND [ARGS...]")
    body: dict[str, Any] = {"command": argv, "env": _env(env)}
    if workdir:
        body["workdir"] = workdir
    if timeout is not None:
        body["timeoutSeconds"] = timeout
    if interactive or tty:
        sys.exit(_interactive(client, name, {**body, "tty": tty}, interactive))
    response = client.open(
        "POST",
        f"/agents/{_quote(name)}/exec",
        query={"stream": True},
        body=json.dumps(body).encode(),
        content_type="application/json",
        accept="application/x-ndjson",
        timeout=None,
    )
    code = 1
    with response:
        for line in response:
            frame = json.loads(line)
            if "exit" in frame:
                ended = frame["exit"]
                if ended.get("timedOut"):
                    click.echo(f"error: the command was killed after its timeout ({timeout:g}s)", err=True)
                code = ended.get("exitCode")
                code = 1 if code is None else int(code)
                continue
            out = sys.stdout.buffer if frame.get("stream") == "stdout" else sys.stderr.buffer
            data = frame["data"].encode() if "data" in frame else base64.b64decode(frame.get("dataBase64", ""))
            out.write(data)
            out.flush()
    sys.exit(code)


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageProblem(f"-e {key}: use KEY=VALUE")
        env[key] = value
    return env


def _interactive(client: ApiClient, name: str, body: dict[str, Any], with_stdin: bool) -> int:
    """The exec WebSocket with the local terminal in raw mode (a terminal given ``-t``), stdin sent as
    typed, the window size kept in step; the command's exit code."""
    import asyncio

    return asyncio.run(_websocket(client, name, body, with_stdin))


async def _websocket(client: ApiClient, name: str, body: dict[str, Any], with_stdin: bool) -> int:
    import asyncio
    import contextlib
    import shutil
    import signal
    import termios
    import tty

    import aiohttp

    url = client.url(f"/agents/{_quote(name)}/exec/ws").replace("http", "ws", 1)
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    raw = body.get("tty") and sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin.fileno()) if raw else None
    loop = asyncio.get_running_loop()
    code = 1
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
            await ws.send_str(json.dumps(body))

            outgoing: asyncio.Queue[str | bytes] = asyncio.Queue()

            def resize() -> None:
                size = shutil.get_terminal_size()
                outgoing.put_nowait(json.dumps({"type": "resize", "rows": size.lines, "cols": size.columns}))

            def typed() -> None:
                data = os.read(sys.stdin.fileno(), 4096)
                if not data:
                    loop.remove_reader(sys.stdin.fileno())
                outgoing.put_nowait(data or json.dumps({"type": "eof"}))

            async def send_all() -> None:
                while True:
                    item = await outgoing.get()
                    await (ws.send_bytes(item) if isinstance(item, bytes) else ws.send_str(item))

            if body.get("tty"):
                resize()
                loop.add_signal_handler(signal.SIGWINCH, resize)
            if raw:
                tty.setraw(sys.stdin.fileno())
            if with_stdin:
                loop.add_reader(sys.stdin.fileno(), typed)
            else:
                outgoing.put_nowait(json.dumps({"type": "eof"}))
            sender = asyncio.create_task(send_all())
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    out = sys.stderr.buffer if message.data[:1] == b"\x02" else sys.stdout.buffer
                    out.write(message.data[1:])
                    out.flush()
                elif message.type == aiohttp.WSMsgType.TEXT:
                    final = json.loads(message.data)
                    if final.get("type") == "exit":
                        code = 1 if final.get("exitCode") is None else int(final["exitCode"])
                    elif final.get("type") == "error":
                        error = final.get("error") or {}
                        click.echo(f"\r\nerror: {error.get('message')} [{error.get('code')}]", err=True)
            sender.cancel()
    except aiohttp.WSServerHandshakeError as exc:
        click.echo(f"error: the server refused the terminal: {exc.status} {exc.message}", err=True)
    except aiohttp.ClientError as exc:
        click.echo(f"error: cannot reach the Parallax server at {client.server} ({exc})", err=True)
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(sys.stdin.fileno())
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
    return code


def _remote(spec: str) -> tuple[str, str] | None:
    """``NAME:/path`` as (name, path); None for a local path."""
    name, sep, path = spec.partition(":")
    if sep and path.startswith("/") and name and "/" not in name:
        return name, path
    return None


@click.command()
@click.argument("source")
@click.argument("destination")
@client_command
def cp(client: ApiClient, source: str, destination: str) -> None:
    """Copy files between an agent's workspace and here: parallax cp NAME:/workspace/x ./x, or
    parallax cp ./x NAME:/workspace/x. A directory goes as a tar (into DESTINATION; created when missing)."""
    remote_source, remote_destination = _remote(source), _remote(destination)
    if bool(remote_source) == bool(remote_destination):
        raise UsageProblem("one of SOURCE and DESTINATION must be NAME:/workspace/path, the other a local path")
    if remote_source:
        _download(client, *remote_source, Path(destination))
    else:
        assert remote_destination is not None
        _upload(client, Path(source), *remote_destination)


def _files_path(name: str, path: str, **query: str) -> str:
    return f"/agents/{_quote(name)}/files?" + urllib.parse.urlencode({"path": path, **query})


def _download(client: ApiClient, name: str, path: str, destination: Path) -> None:
    response = client.open("GET", _files_path(name, path), accept="*/*", timeout=None)
    with response:
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            target = destination / Path(path).name if destination.is_dir() else destination
            with open(target, "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
            click.echo(f"{name}:{path} -> {target}")
            return
    # a directory: its tar, extracted safely (no absolute paths, links out, or devices)
    response = client.open("GET", _files_path(name, path, archive="tar"), accept="application/x-tar", timeout=None)
    existed = destination.is_dir()
    destination.mkdir(parents=True, exist_ok=True)
    with response, tarfile.open(fileobj=response, mode="r|") as tar:
        for member in tar:
            if not existed:  # DESTINATION is the directory itself, as with docker cp
                member.name = member.name.partition("/")[2] or "."
            tar.extract(member, destination, filter="data")
    click.echo(f"{name}:{path} -> {destination}")


def _upload(client: ApiClient, source: Path, name: str, path: str) -> None:
    if not source.exists():
        raise UsageProblem(f"{source} does not exist")
    if source.is_dir():
        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w") as tar:
                tar.add(source, arcname=source.name)
            length = spool.tell()
            spool.seek(0)
            _put(client, _files_path(name, path), spool, length, "application/x-tar")
        click.echo(f"{source} -> {name}:{path.rstrip('/')}/{source.name}")
        return
    target = path + source.name if path.endswith("/") else path
    with open(source, "rb") as data:
        _put(client, _files_path(name, target), data, source.stat().st_size, "application/octet-stream")
    click.echo(f"{source} -> {name}:{target}")


def _put(client: ApiClient, url_path: str, data: Any, length: int, content_type: str) -> None:
    import urllib.request

    headers = {"Content-Type": content_type, "Content-Length": str(length), "User-Agent": "parallax-cli"}
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    request = urllib.request.Request(client.server + url_path, data=data, headers=headers, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=None) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise client._error_answer(exc.code, exc.headers, exc.read()) from None
    except urllib.error.URLError as exc:
        raise client._unreachable(exc.reason) from None
