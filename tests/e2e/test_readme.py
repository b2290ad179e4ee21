"""The README's walk-through, run as a newcomer runs it, with the commands read from README.md itself.

A real ``parallax serve`` on its defaults (only its port, store, default network and instance label are
the test's own, so it can share the Docker daemon), then "Using it" (curl and docker) and "Declarative
agents and the CLI" (``parallax apply -f specs/examples/`` and the rest), each command checked to
succeed. If the README's commands change, this test runs the new ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import yaml

from controller.model.agent import container_name
from tests.harness import REPO, cleanup_instance
from tests.server_process import PARALLAX, Server, remove_instance_networks, server_environment

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

README = (REPO / "README.md").read_text()
README_URL = "http://localhost:3200"
VENV_PARALLAX = ".venv/bin/parallax"
# What the test sets itself; everything else is the server's default (the caller's environment is dropped).
ISOLATION = ("PORT", "PARALLAX_STORE", "DOCKER_NETWORK", "PARALLAX_INSTANCE")


def section(heading: str) -> str:
    """The README text from ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = README.index(f"\n{heading}\n")
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", README[start + 1 :], re.MULTILINE)]
    return README[start : start + 1 + ends[1]] if len(ends) > 1 else README[start:]


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, blank lines and comments dropped."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        joined = body.replace("\\\n", " ")
        commands = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
        blocks.append([" ".join(c.split()) for c in commands if c and not c.startswith("#")])
    return blocks


def serve_environment(command: str) -> dict[str, str]:
    """``A=1 B=2 .venv/bin/parallax serve`` -> {"A": "1", "B": "2"}."""
    words = shlex.split(command)
    assert words[-2:] == [VENV_PARALLAX, "serve"], command
    return dict(word.split("=", 1) for word in words[:-2])


def example_names(folder: str) -> list[str]:
    return sorted(yaml.safe_load(path.read_text())["metadata"]["name"] for path in (REPO / folder).glob("*.yaml"))


def run(command: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def follow(command: str, env: dict[str, str], expected: str, timeout: float = 30) -> str:
    """A following command (``logs -f``): read its output until ``expected`` shows, then stop it."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            seen.append(line)
            if expected in line or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    output = "".join(seen)
    assert expected in output, f"{command}: no {expected!r} in\n{output}"
    return output


@pytest.fixture
def newcomer(docker_daemon: None, tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str], Any]]:
    """The server's environment (defaults + isolation), the client's, and the settings to clean up with."""
    isolated, settings = server_environment(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PARALLAX_", "DEFAULT_", "DOCKER_"))}
    base.pop("PORT", None)
    server_env = {**base, **{k: isolated[k] for k in ISOLATION}}
    client_env = {**base, "PARALLAX_SERVER": f"http://127.0.0.1:{isolated['PORT']}"}
    yield server_env, client_env, settings

    async def clean() -> None:
        docker = aiodocker.Docker()
        try:
            await cleanup_instance(docker, settings)
        finally:
            await docker.close()

    for server in [s for s in Server.started if s.env.get("PORT") == isolated["PORT"]]:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
    asyncio.run(clean())
    remove_instance_networks(settings.instance)


def start(env: dict[str, str], serve_command: str) -> Server:
    server = Server({**env, **serve_environment(serve_command)})
    asyncio.run(server.start(timeout=30))
    return server


def test_the_readme_walk_through_works_as_written(newcomer: tuple[dict[str, str], dict[str, str], Any]) -> None:
    server_env, client_env, _ = newcomer
    using_it, declarative = section("## Using it"), section("### Declarative agents and the CLI")

    # 1. The service with the test image, as "Using it" says to try it without the real images.
    serve, curls = bash_blocks(using_it)[:2]
    assert serve == [f"PARALLAX_IMAGE_PREFIX=parallax-test/agent- {VENV_PARALLAX} serve"], serve
    server = start(server_env, serve[0])
    url = server.url

    # 2. "Using it": create, see the container, read it back, delete.
    assert [c.split()[0] for c in curls] == ["curl", "docker", "curl", "curl"], curls
    for command in curls:
        command = command.replace(README_URL, url)
        if command.startswith("docker"):
            name = re.search(r"label=parallax\.agent=(\S+)", command)
            assert name, command
            expected = container_name(name.group(1))
            until(lambda c=command, e=expected: e in run(c, client_env).stdout, 30, f"{expected} in `{command}`")
            continue
        body = json.loads(run(command, client_env).stdout)
        assert "error" not in body and body["metadata"]["name"] == "heavy-analyzer", body
    gone = f"curl -s -o /dev/null -w '%{{http_code}}' {url}/agents/heavy-analyzer"
    until(lambda: run(gone, client_env).stdout == "404", 60, "heavy-analyzer to be purged after its DELETE")

    # 3. "Declarative agents and the CLI" against the same server.
    steps, volume_steps = bash_blocks(declarative)[:2]
    examples = example_names("specs/examples")
    assert len(examples) >= 4
    ran = []
    for command in steps:
        assert command.startswith(VENV_PARALLAX + " "), command
        if command.startswith(f"{VENV_PARALLAX} serve"):
            continue  # another way to run the server (tests/e2e/test_cli.py covers --specs-dir)
        command = command.replace(VENV_PARALLAX, PARALLAX, 1)
        words = command.split()
        if "-f" in words[2:] and words[1] == "logs":
            follow(command, client_env, f"agent {words[2]} started")
        else:
            output = run(command, client_env).stdout
            if "--dry-run" in words:
                assert [f"agent/{n} created (dry run)" for n in examples] == [
                    line for line in output.splitlines() if line.startswith("agent/")
                ], output
            if "--wait" in words:
                assert all(f"agent/{n} Running" in output for n in examples), output
            if words[1:3] == ["get", "agents"]:
                rows = {line.split()[0]: line.split() for line in output.splitlines()[1:]}
                assert sorted(rows) == examples and all(row[2] == "Running" for row in rows.values()), output
            if words[1] == "describe":
                assert re.search(r"^Phase:\s+Running$", output, re.MULTILINE), output
        ran.append(words[1])
    assert ran == ["apply", "apply", "get", "describe", "logs"], ran

    # 4. The volume example, on a server restarted with the root it needs (the agents keep running).
    assert len(volume_steps) == 2, volume_steps
    server.terminate()
    start(server_env, volume_steps[0])
    output = run(volume_steps[1].replace(VENV_PARALLAX, PARALLAX, 1), client_env).stdout
    assert all(f"agent/{n} Running" in output for n in example_names("specs/volume-examples")), output
