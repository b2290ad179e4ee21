"""Exec inside a running agent, against the real daemon: exit codes, stderr apart from stdout, the
timeout killing the process for real, binary and huge output, concurrency, and refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from typing import Any

import pytest

from tests.conftest import StartController
from tests.harness import Controller, docker_exec, running

pytestmark = pytest.mark.docker

CAP = 64 * 1024


@pytest.fixture
async def box(start_controller: StartController) -> tuple[Controller, str]:
    controller = await start_controller(
        network=f"pxex-{uuid.uuid4().hex[:8]}", exec_concurrency=20, exec_output_bytes=CAP
    )
    name = f"pxex-{uuid.uuid4().hex[:6]}"
    status, body = await controller.request(
        "POST", "/agents", {"name": name, "type": "claude", "env": {"TICK_SECONDS": "5"}}
    )
    assert status == 201, body
    await controller.wait_agent(name, running)
    return controller, name


async def run(controller: Controller, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    return await controller.request("POST", f"/agents/{name}/exec", body)


async def test_exit_codes_stdout_and_stderr_apart_stdin_env_workdir_and_user(
    box: tuple[Controller, str], caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    controller, name = box
    status, body = await run(controller, name, {"command": ["sh", "-c", "echo out; echo err >&2; exit 7"]})
    assert status == 200, body
    assert body["exitCode"] == 7 and body["stdout"] == "out\n" and body["stderr"] == "err\n"
    assert body["timedOut"] is False and body["truncated"] is False and body["durationMs"] >= 0
    # argv as given: no shell splits or expands it
    status, body = await run(controller, name, {"command": ["echo", "$HOME", "a b", "*"]})
    assert body["stdout"] == "$HOME a b *\n" and body["exitCode"] == 0
    status, body = await run(controller, name, {"command": ["cat"], "stdin": "line one\nline two\n"})
    assert body["stdout"] == "line one\nline two\n"
    status, body = await run(
        controller,
        name,
        {
            "command": ["sh", "-c", 'echo "$SECRET_X"; pwd; id -u'],
            "env": {"SECRET_X": "v4lue-s3cret"},
            "workdir": "/tmp",
        },
    )
    assert body["stdout"] == "v4lue-s3cret\n/tmp\n1000\n"  # the image's user (1000), not root
    # a refused exec (no such directory) carries no env value in its error, nor does the log
    status, body = await run(
        controller, name, {"command": ["true"], "env": {"SECRET_X": "v4lue-s3cret"}, "workdir": "/nowhere"}
    )
    assert status in (200, 502), body
    assert "v4lue-s3cret" not in json.dumps(body)
    assert "v4lue-s3cret" not in caplog.text


async def test_timeout_kills_the_process_and_what_it_started(box: tuple[Controller, str]):
    controller, name = box
    marker = uuid.uuid4().hex[:10]
    status, body = await run(
        controller, name, {"command": ["sh", "-c", f"sleep 300 & sleep 301; echo never {marker}"], "timeoutSeconds": 1}
    )
    assert status == 200, body
    assert body["timedOut"] is True and "never" not in body["stdout"]
    assert 900 <= body["durationMs"] < 8000
    _, listing = await docker_exec(f"parallax-agent-{name}", "ps", "-o", "pid,args")
    assert "sleep 300" not in listing and "sleep 301" not in listing, listing


async def test_binary_output_and_huge_output_capped(box: tuple[Controller, str]):
    controller, name = box
    status, body = await run(controller, name, {"command": ["sh", "-c", "printf '\\000\\377\\001binary'"]})
    assert body["stdoutEncoding"] == "base64"
    assert base64.b64decode(body["stdout"]) == b"\x00\xff\x01binary"
    status, body = await run(controller, name, {"command": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\000' x"]})
    assert status == 200
    assert body["truncated"] is True and len(body["stdout"]) == CAP and body["stdoutBytes"] == 3_000_000
    assert body["exitCode"] == 0


async def test_twenty_concurrent_execs_then_429_past_the_bound(box: tuple[Controller, str]):
    controller, name = box
    results = await asyncio.gather(
        *(run(controller, name, {"command": ["sh", "-c", f"sleep 1; echo {i}"]}) for i in range(20))
    )
    assert [(s, b["stdout"]) for s, b in results] == [(200, f"{i}\n") for i in range(20)]
    slow = [asyncio.create_task(run(controller, name, {"command": ["sleep", "3"]})) for _ in range(20)]
    await asyncio.sleep(1.5)
    assert controller.session is not None
    async with controller.session.post(f"{controller.base_url}/agents/{name}/exec", json={"command": ["true"]}) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "TOO_MANY_EXECS"
    assert all(s == 200 for s, _ in await asyncio.gather(*slow))


async def test_streamed_frames_arrive_as_they_happen(box: tuple[Controller, str]):
    controller, name = box
    assert controller.session is not None
    url = f"{controller.base_url}/agents/{name}/exec?stream=true"
    body = {"command": ["sh", "-c", "echo first; sleep 1; echo second >&2; exit 3"]}
    frames, seen_at = [], []
    loop = asyncio.get_running_loop()
    async with controller.session.post(url, json=body) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
        async for line in resp.content:
            frames.append(json.loads(line))
            seen_at.append(loop.time())
    assert frames[0] == {"stream": "stdout", "data": "first\n"}
    assert frames[1] == {"stream": "stderr", "data": "second\n"}
    assert frames[-1]["exit"]["exitCode"] == 3
    assert seen_at[1] - seen_at[0] > 0.5  # the first frame came before the command ended


async def test_client_leaving_a_stream_kills_the_command(box: tuple[Controller, str]):
    controller, name = box
    assert controller.session is not None
    url = f"{controller.base_url}/agents/{name}/exec?stream=true"
    async with controller.session.post(url, json={"command": ["sh", "-c", "echo up; sleep 207"]}) as resp:
        await resp.content.readline()

    async def gone() -> bool:
        _, listing = await docker_exec(f"parallax-agent-{name}", "ps", "-o", "args")
        return "sleep 207" not in listing

    for _ in range(40):
        if await gone():
            break
        await asyncio.sleep(0.25)
    assert await gone()


async def test_websocket_with_a_terminal_stdin_and_resize(box: tuple[Controller, str]):
    controller, name = box
    assert controller.session is not None
    async with controller.session.ws_connect(f"{controller.base_url}/agents/{name}/exec/ws") as ws:
        await ws.send_str(json.dumps({"command": ["sh"], "tty": True}))
        await ws.send_str(json.dumps({"type": "resize", "rows": 33, "cols": 111}))
        await asyncio.sleep(0.3)
        await ws.send_bytes(b"stty size; echo done-$((40+2)); exit 5\n")
        output = b""
        final: dict[str, Any] = {}
        async with asyncio.timeout(15):
            async for message in ws:
                if message.type.name == "BINARY":
                    output += message.data[1:]
                elif message.type.name == "TEXT":
                    final = json.loads(message.data)
    assert b"33 111" in output and b"done-42" in output
    assert final == {"type": "exit", "exitCode": 5, "timedOut": False}


async def test_refusals_name_the_field_or_the_phase(box: tuple[Controller, str]):
    controller, name = box
    for bad, field in (
        ({"command": "ls"}, "command"),
        ({"command": []}, "command"),
        ({"command": ["ls"], "timeoutSeconds": 0}, "timeoutSeconds"),
        ({"command": ["ls"], "env": {"A": 1}}, "env"),
        ({"command": ["ls"], "workdir": "tmp"}, "workdir"),
        ({"command": ["ls"], "shell": True}, "shell"),
    ):
        status, body = await run(controller, name, bad)
        assert status == 422 and body["error"]["details"][0]["field"] == field, (bad, body)
    status, body = await run(controller, "pxex-nobody", {"command": ["ls"]})
    assert status == 404
    status, _ = await controller.request("PATCH", f"/agents/{name}", {"paused": True})
    assert status == 200
    await controller.wait_agent(name, lambda a: a["status"].get("phase") == "Paused")
    status, body = await run(controller, name, {"command": ["ls"]})
    assert status == 409 and body["error"]["code"] == "NOT_RUNNING" and "Paused" in body["error"]["message"], body
    status, _ = await controller.request("PATCH", f"/agents/{name}", {"paused": False})
    assert status == 200
    await controller.wait_agent(name, lambda a: a["status"].get("phase") == "Running")
    status, _ = await controller.request("PATCH", f"/agents/{name}", {"suspend": True})
    assert status == 200
    await controller.wait_agent(name, lambda a: a["status"].get("phase") == "Suspended")
    status, body = await run(controller, name, {"command": ["ls"]})
    assert status == 409 and body["error"]["code"] == "NOT_RUNNING" and "Suspended" in body["error"]["message"]
