"""``parallax exec`` and ``parallax cp`` as subprocesses against a real ``parallax serve``."""

from __future__ import annotations

import os
import pty
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_cli import Cli, running_server  # noqa: F401 (the module's server fixture)
from tests.server_process import PARALLAX, Server

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


@pytest.fixture
def agent(running_server: Server) -> tuple[Cli, str]:  # noqa: F811
    cli = Cli(running_server.url)
    name = f"cli-x-{uuid.uuid4().hex[:6]}"
    cli.api.call("POST", "/agents", json_body={"name": name, "type": "claude"})
    deadline = time.monotonic() + 30
    while (cli.agent(name) or {}).get("status", {}).get("phase") != "Running":
        assert time.monotonic() < deadline, "agent did not run"
        time.sleep(0.2)
    return cli, name


def test_exec_prints_stdout_and_stderr_apart_and_exits_with_the_code(agent: tuple[Cli, str]):
    cli, name = agent
    result = cli("exec", name, "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 4")
    assert (result.code, result.out, result.err) == (4, "to-out\n", "to-err\n"), result
    result = cli("exec", "-e", "GREETING=hi there", name, "--", "sh", "-c", 'echo "$GREETING"')
    assert result.ok and result.out == "hi there\n", result
    result = cli("exec", "--timeout", "1", name, "--", "sleep", "30")
    assert result.code == 137 and "killed after its timeout" in result.err, result


def test_exec_with_a_terminal(agent: tuple[Cli, str]):
    cli, name = agent
    controller, worker = pty.openpty()
    proc = subprocess.Popen(
        [PARALLAX, "exec", "-it", name, "--", "sh"], stdin=worker, stdout=worker, stderr=worker, env=cli.env
    )
    os.close(worker)
    time.sleep(1.5)
    os.write(controller, b"tty; echo answer-$((6*7)); exit 3\n")
    output = b""
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            output += os.read(controller, 4096)
        except OSError:
            break
    assert proc.wait(10) == 3, output
    assert b"answer-42" in output and b"/dev/pts/" in output


def test_cp_a_file_and_a_directory_both_ways(agent: tuple[Cli, str], tmp_path: Path):
    cli, name = agent
    data = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(data)
    assert cli("cp", str(tmp_path / "blob.bin"), f"{name}:/workspace/blob.bin").ok
    assert cli("cp", f"{name}:/workspace/blob.bin", str(tmp_path / "back.bin")).ok
    assert (tmp_path / "back.bin").read_bytes() == data
    tree = tmp_path / "proj"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "main.py").write_text("print('hi')\n")
    assert cli("cp", str(tree), f"{name}:/workspace").ok
    result = cli("exec", name, "--", "cat", "/workspace/proj/src/main.py")
    assert result.out == "print('hi')\n", result
    assert cli("cp", f"{name}:/workspace/proj", str(tmp_path / "copy")).ok
    assert (tmp_path / "copy" / "src" / "main.py").read_text() == "print('hi')\n"
    result = cli("cp", f"{name}:/etc/passwd", str(tmp_path / "passwd"))
    assert result.code == 1 and "outside the agent's writable mounts" in result.err
    assert not (tmp_path / "passwd").exists()
