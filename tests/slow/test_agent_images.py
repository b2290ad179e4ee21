"""The real agent images: built from a locally made Debian base, run under the runtime's hardening.

Slow (a cold build takes minutes; a cached one seconds). Run alone with
``.venv/bin/pytest -q -s -m slow tests/slow/test_agent_images.py``; ``-s`` shows the build progress and
the report of image sizes, build times and CLI versions.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiohttp import web

from controller.config import Settings
from controller.model.agent import Agent, SpecDefaults, container_name
from controller.runtime.docker.render import render_container
from tests.harness import REPO, Controller, docker_exec, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.docker]

DEBIAN_BASE = "parallax/debian-bookworm:local"
IMAGE_PREFIX = "parallax/agent-"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NEEDS_CREDENTIALS = "parallax: needs credentials:"
VERSION_LABEL = "ai.parallax.agent.cli-version"
AGENT_UID = "1000"
# The CLI each image runs and the credential its needs-credentials line names first.
CLIS = {
    "claude": "ANTHROPIC_API_KEY",
    "codex": "OPENAI_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "aider": "ANTHROPIC_API_KEY",
}


def _inspect_image(tag: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)[0]
    return result


@pytest.fixture(scope="module")
def agent_images(docker_daemon: None) -> dict[str, dict[str, Any]]:
    """Makes the Debian base (cached), then builds base and every agent image with `parallax images build`."""
    started = time.monotonic()
    subprocess.run(["bash", str(REPO / "scripts" / "make-debian-base.sh"), DEBIAN_BASE], check=True, timeout=900)
    base_seconds = time.monotonic() - started
    command = [sys.executable, "-m", "api.cli.images", "build", "all", "--base-image", DEBIAN_BASE]
    if HOST_CA_BUNDLE.exists():
        # This machine's trust store, which includes the CA of its TLS-intercepting egress proxy.
        command += ["--ca-bundle", str(HOST_CA_BUNDLE)]
    build = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    print(build.stdout, build.stderr, sep="\n")
    assert build.returncode == 0, f"parallax images build failed:\n{build.stdout}\n{build.stderr}"
    seconds = {tag: float(s) for tag, s in re.findall(r"^==> built (\S+) in (\d+) s", build.stdout, re.MULTILINE)}
    report: dict[str, dict[str, Any]] = {}
    for name in ("base", *CLIS):
        tag = f"{IMAGE_PREFIX}{name}:latest"
        image = _inspect_image(tag)
        labels = image["Config"].get("Labels") or {}
        report[name] = {
            "tag": tag,
            "size_mb": round(image["Size"] / 1e6),
            "build_seconds": seconds.get(tag),
            "version": labels.get(VERSION_LABEL, ""),
            "user": image["Config"].get("User", ""),
        }
    print(f"\nDebian base {DEBIAN_BASE}: ready in {base_seconds:.0f} s (cached when it already exists)")
    print(f"{'image':<30} {'size':>8} {'build':>7}  version")
    for row in report.values():
        print(f"{row['tag']:<30} {row['size_mb']:>5} MB {row['build_seconds'] or 0:>5.0f} s  {row['version']}")
    return report


async def run_hardened(
    docker: aiodocker.Docker, image: str, argv: list[str], *, timeout: float = 120
) -> tuple[int, str, dict[str, Any]]:
    """Runs ``argv`` in ``image`` with the container settings the controller renders for an agent
    (read-only root, tmpfs /tmp and home, no capabilities, no-new-privileges, init, pids and memory
    limits), minus its network and workspace volume; returns the exit code, the output and the config."""
    agent = Agent.from_manifest(
        {"metadata": {"name": "img-probe", "uid": "img-probe"}, "spec": {"type": "custom", "image": image}},
        SpecDefaults(memory="512m", cpu=1.0, pids=512, network="none"),
    )
    config = render_container(agent, Settings(image_prefix=IMAGE_PREFIX))
    config.pop("NetworkingConfig", None)
    config["HostConfig"].pop("Mounts", None)
    config["HostConfig"]["NetworkMode"] = "none"
    config["Labels"] = {"parallax.test": "agent-images"}
    config["OpenStdin"] = False
    config["Entrypoint"] = argv[:1]
    config["Cmd"] = argv[1:]
    container = await docker.containers.create(config, name=f"img-probe-{uuid.uuid4().hex[:8]}")
    try:
        await container.start()
        result = await container.wait(timeout=timeout)
        output = "".join(await container.log(stdout=True, stderr=True))
        return int(result["StatusCode"]), output, config
    finally:
        await container.delete(force=True)


def test_images_are_built_from_the_local_debian_base_with_pinned_clis(agent_images: dict[str, dict[str, Any]]) -> None:
    for name, row in agent_images.items():
        assert row["user"] == f"{AGENT_UID}:{AGENT_UID}", name
        if name != "base":
            assert re.fullmatch(r"\d+\.\d+\.\d+", row["version"]), (name, row)
    base = _inspect_image(f"{IMAGE_PREFIX}base:latest")
    assert base["Config"]["Entrypoint"] == ["/usr/bin/tini", "-s", "--", "/usr/local/bin/parallax-agent"]
    assert "org.opencontainers.image.source" in base["Config"]["Labels"]


@pytest.mark.parametrize(
    ("cli", "expected"),
    [("claude", "{v} (Claude Code)"), ("codex", "codex-cli {v}"), ("gemini", "{v}"), ("aider", "aider {v}")],
)
async def test_each_cli_prints_its_pinned_version_under_the_runtime_hardening(
    agent_images: dict[str, dict[str, Any]], docker: aiodocker.Docker, cli: str, expected: str
) -> None:
    row = agent_images[cli]
    code, output, config = await run_hardened(docker, row["tag"], [cli, "--version"])
    host = config["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and host["Init"]
    assert code == 0, output
    assert expected.format(v=row["version"]) in output.splitlines(), output


@pytest.mark.parametrize("name", ["base", *CLIS])
async def test_agents_run_as_a_non_root_user_that_can_write_only_its_home_and_tmp(
    agent_images: dict[str, dict[str, Any]], docker: aiodocker.Docker, name: str
) -> None:
    script = (
        'id -u; id -un; echo "home=$HOME"; '
        'touch "$HOME/probe" /tmp/probe && echo "home and tmp writable"; '
        "touch /usr/local/probe 2>/dev/null || echo 'root filesystem read-only'; "
        "node --version; git --version; rg --version | sed -n 1p"
    )
    code, output, _ = await run_hardened(docker, agent_images[name]["tag"], ["sh", "-c", script])
    lines = output.splitlines()
    assert code == 0, output
    assert lines[:5] == [AGENT_UID, "agent", "home=/home/agent", "home and tmp writable", "root filesystem read-only"]
    assert lines[5].startswith("v22."), output


async def _logs(docker: aiodocker.Docker, container: str) -> str:
    return "".join(await docker.containers.container(container).log(stdout=True, stderr=True))


@pytest.mark.parametrize("cli", list(CLIS))
async def test_agent_without_credentials_reports_it_and_stays_up(
    agent_images: dict[str, dict[str, Any]], start_controller: Any, docker: aiodocker.Docker, cli: str
) -> None:
    controller: Controller = await start_controller(image_prefix=IMAGE_PREFIX)
    name = f"img-{cli}-{uuid.uuid4().hex[:6]}"
    status, body = await controller.request(
        "POST", "/agents", {"name": name, "type": cli, "resources": {"memory": "512m"}}
    )
    assert status == 201, body
    await controller.wait_agent(name, running, timeout=60)
    container = container_name(name)

    async def logs_with(text: str) -> str | None:
        logs = await _logs(docker, container)
        return logs if text in logs else None

    logs = await wait_for(lambda: logs_with(NEEDS_CREDENTIALS), timeout=30, what="the needs-credentials line")
    assert f"{NEEDS_CREDENTIALS} set {CLIS[cli]}" in logs

    status, body = await controller.request("POST", f"/agents/{name}/send", {"message": "hello from the slow test"})
    assert status == 202, body
    logs = await wait_for(lambda: logs_with("message 1 was not delivered"), timeout=30, what="the undelivered line")
    marked = [line for line in logs.splitlines() if line.startswith(NEEDS_CREDENTIALS)]
    assert len(marked) == 2, logs
    assert marked[0].startswith(f"{NEEDS_CREDENTIALS} set {CLIS[cli]}")
    assert marked[1] == marked[0] + "; message 1 was not delivered"

    agent = await controller.agent(name)
    assert agent is not None
    assert agent["status"]["phase"] == "Running"
    assert agent["status"].get("restartCount", 0) == 0
    code, output = await docker_exec(container, "sh", "-c", "id -u; touch /workspace/probe && echo workspace-ok")
    assert (code, output.split()) == (0, [AGENT_UID, "workspace-ok"])

    status, _ = await controller.request("DELETE", f"/agents/{name}")
    assert status == 202
    await controller.wait_gone(name, timeout=60)


FAKE_ANSWER = "pong from the fake model"


class FakeAnthropicApi:
    """A stand-in for the Anthropic Messages API (streaming): answers every request with FAKE_ANSWER and
    records what it was asked. It listens on the Docker bridge's gateway, which agent containers reach."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_route("*", "/{tail:.*}", self.other)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def other(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "not faked"}, status=404)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        usage = {"input_tokens": 1, "output_tokens": 1}
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model", "fake")}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"message": {**message, "content": [], "stop_reason": None, "usage": usage}}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": FAKE_ANSWER}}),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage}),
            ("message_stop", {}),
        ]
        for name, data in events:
            await response.write(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode())
        return response

    def user_texts(self) -> list[list[str]]:
        """For each request, the texts of its user turns (what the model was asked, in order)."""
        result = []
        for body in self.requests:
            texts: list[str] = []
            for turn in body.get("messages", []):
                if turn.get("role") != "user":
                    continue
                content = turn.get("content")
                parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
                texts.extend(str(p) for p in parts)
            result.append(texts)
        return result


@pytest.fixture
async def fake_anthropic(docker: aiodocker.Docker) -> AsyncIterator[FakeAnthropicApi]:
    bridge = await (await docker.networks.get("bridge")).show()
    gateway = bridge["IPAM"]["Config"][0]["Gateway"]
    api = FakeAnthropicApi()
    await api.start(gateway)
    yield api
    await api.stop()


async def test_messages_sent_through_the_api_reach_claude_and_its_answers_are_logged(
    agent_images: dict[str, dict[str, Any]],
    start_controller: Any,
    docker: aiodocker.Docker,
    fake_anthropic: FakeAnthropicApi,
) -> None:
    controller: Controller = await start_controller(image_prefix=IMAGE_PREFIX)
    name = f"img-talk-{uuid.uuid4().hex[:6]}"
    secret = f"sk-ant-fake-{uuid.uuid4().hex}"
    env = {"ANTHROPIC_API_KEY": secret, "ANTHROPIC_BASE_URL": fake_anthropic.url}
    status, body = await controller.request(
        "POST", "/agents", {"name": name, "type": "claude", "env": env, "resources": {"memory": "512m"}}
    )
    assert status == 201, body
    await controller.wait_agent(name, running, timeout=60)
    container = container_name(name)

    async def logs_with(text: str) -> str | None:
        logs = await _logs(docker, container)
        return logs if text in logs else None

    await wait_for(lambda: logs_with("parallax: claude agent ready"), timeout=30, what="the ready line")
    second = "second question,\nover two lines, with a literal \\n and $(id) kept as written"
    for number, message in enumerate(["first question from the slow test", second], start=1):
        status, body = await controller.request("POST", f"/agents/{name}/send", {"message": message})
        assert status == 202, body
        done = f"parallax: message {number}: done"
        await wait_for(functools.partial(logs_with, done), timeout=120, what=done)

    logs = await _logs(docker, container)
    assert logs.count(FAKE_ANSWER) == 2, logs
    assert NEEDS_CREDENTIALS not in logs
    assert secret not in logs
    asked = [texts for texts in fake_anthropic.user_texts() if any("question" in t for t in texts)]
    assert any("first question from the slow test" in t for t in asked[0]), asked
    # The second call continues the conversation: it carries the first question too.
    assert any("first question" in t for t in asked[-1]) and any("second question" in t for t in asked[-1]), asked
    # The multi-line message reached claude as one message, exactly as sent.
    assert any(second in t for t in asked[-1]), asked
    assert "message 3" not in logs

    status, _ = await controller.request("DELETE", f"/agents/{name}")
    assert status == 202
    await controller.wait_gone(name, timeout=60)
