"""The ``parallax`` client commands, each run as a subprocess against a real ``parallax serve``."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import yaml

from api.cli.client import ApiClient, ErrorAnswer
from tests.harness import cleanup_instance
from tests.server_process import PARALLAX, Server, free_port, remove_instance_networks, server_environment

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def server_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Any]:
    return server_environment(tmp_path, DEFAULT_MEMORY="64m", PARALLAX_RESYNC_SECONDS="1", **extra)


async def _cleanup(settings: Any) -> None:
    docker = aiodocker.Docker()
    try:
        await cleanup_instance(docker, settings)
    finally:
        await docker.close()


def stop(server: Server, settings: Any) -> None:
    """SIGTERM (SIGKILL if it hangs), then remove what the server's instance left in Docker."""
    try:
        server.terminate(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
    finally:
        asyncio.run(_cleanup(settings))
        remove_instance_networks(settings.instance)


@pytest.fixture(scope="module")
def running_server(docker_daemon: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: every test uses its own ``cli-`` agent names."""
    env, settings = server_env(tmp_path_factory.mktemp("cli-server"))
    server = Server(env)
    asyncio.run(server.start())
    try:
        yield server
    finally:
        stop(server, settings)


class Cli:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.env = {k: v for k, v in os.environ.items() if k not in ("PARALLAX_API_TOKEN", "PARALLAX_SERVER")}
        self.env["PARALLAX_SERVER"] = url
        if token:
            self.env["PARALLAX_API_TOKEN"] = token
        self.api = ApiClient(url, token)

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 60, **env: str) -> Result:
        proc = subprocess.run(
            [PARALLAX, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **env},
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str) -> Stream:
        """A long-running command the test ends with Ctrl-C (SIGINT). The child gets SIGINT's default
        disposition whatever the test process inherited (a shell or another test may have made it
        ignored, and a Python child would then install no KeyboardInterrupt), as a command typed at a
        terminal has it."""
        return Stream(
            subprocess.Popen(
                [PARALLAX, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.env,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        )

    def agent(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get_agent(name)
        except ErrorAnswer as exc:
            if exc.status == 404:
                return None
            raise


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"

    @property
    def ok(self) -> bool:
        return self.code == 0

    def one_error_line(self) -> str:
        """A failure reads as ``error: ...`` lines, never a traceback."""
        assert self.code != 0, self
        assert "Traceback" not in self.err, self
        lines = self.err.strip().splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), self
        return lines[0]


class Stream:
    """A long-running command (``-w``, ``-f``) whose output lines are read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, predicate: Callable[[str], bool], timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.seen}"
                continue
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line in {timeout}s; seen: {self.seen}")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cli(running_server: Server) -> Cli:
    return Cli(running_server.url)


def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {value!r}")


def manifest(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "parallax.ai/v1",
        "kind": "Agent",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"type": "claude", "stopGracePeriodSeconds": 1, **spec},
    }


def docs(*items: dict[str, Any]) -> str:
    return yaml.safe_dump_all(items, sort_keys=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


# --- apply -----------------------------------------------------------------------------------------------


def test_apply_directory_waits_then_reapply_is_unchanged_and_dry_run_shows_the_cause(cli: Cli, tmp_path: Path) -> None:
    a, b = unique("cli-apply"), unique("cli-apply")
    (tmp_path / "team").mkdir()
    (tmp_path / "a.yaml").write_text(docs(manifest(a, resources={"memory": "64m"})))
    (tmp_path / "team" / "b.yml").write_text(docs(manifest(b, suspend=True)))
    (tmp_path / "README.md").write_text("not a spec")

    result = cli("apply", "-f", str(tmp_path), "--wait", "--timeout", "30")
    assert result.ok, result
    assert f"agent/{a} created" in result.out and f"agent/{b} created" in result.out
    assert f"agent/{a} Running" in result.out and f"agent/{b} Suspended" in result.out

    result = cli("apply", "-f", str(tmp_path))
    assert result.ok, result
    assert result.out.splitlines() == [f"agent/{a} unchanged", f"agent/{b} unchanged"]

    (tmp_path / "a.yaml").write_text(docs(manifest(a, resources={"memory": "96m"})))
    result = cli("apply", "-f", str(tmp_path), "--dry-run")
    assert result.ok, result
    assert f"agent/{a} configured (dry run)\n  recreate: resources.memory changed 64m -> 96m\n" in result.out
    assert f"agent/{b} unchanged (dry run)" in result.out
    stored = cli.agent(a)
    assert stored is not None and stored["spec"]["resources"]["memory"] == "64m"

    result = cli("apply", "-f", "-", stdin=(tmp_path / "a.yaml").read_text())
    assert result.ok, result
    assert result.out.strip() == f"agent/{a} configured"
    cli("delete", "agent", a, b)


def test_apply_prune_removes_agents_that_left_the_set_and_needs_a_selector(cli: Cli, tmp_path: Path) -> None:
    app = unique("cli-prune")
    keep, gone = f"{app}-keep", f"{app}-gone"
    spec = tmp_path / "set.yaml"
    spec.write_text(docs(manifest(keep, {"app": app}, suspend=True), manifest(gone, {"app": app}, suspend=True)))
    assert cli("apply", "-f", str(spec)).ok
    spec.write_text(docs(manifest(keep, {"app": app}, suspend=True)))

    refused = cli("apply", "-f", str(spec), "--prune")
    assert "needs a label selector" in refused.one_error_line()

    result = cli("apply", "-f", str(spec), "--prune", "-l", f"app={app}")
    assert result.ok, result
    assert result.out.splitlines() == [f"agent/{keep} unchanged", f"agent/{gone} pruned"]
    eventually(lambda: cli.agent(gone) is None, what=f"{gone} to be purged")
    assert cli.agent(keep) is not None
    cli("delete", "agent", keep)


def test_apply_wait_fails_with_the_agents_error(cli: Cli) -> None:
    name = unique("cli-noimage")
    result = cli("apply", "-f", "-", "--wait", "--timeout", "30", stdin=docs(manifest(name, image="cli-no-such:1")))
    assert result.code == 1, result
    assert f"agent/{name} Pending: IMAGE_NOT_FOUND" in result.out
    assert "1 of 1 agents failed" in result.one_error_line()
    cli("delete", "agent", name)


# --- get / describe -------------------------------------------------------------------------------------


def test_get_prints_tables_yaml_json_and_names(cli: Cli) -> None:
    team = unique("cli-get")
    names = [f"{team}-a", f"{team}-b"]
    assert cli("apply", "-f", "-", stdin=docs(*(manifest(n, {"team": team}, suspend=True) for n in names))).ok

    table = cli("get", "agents", "-l", f"team={team}")
    assert table.ok, table
    lines = table.out.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "PHASE", "RESTARTS", "AGE"]
    assert [line.split()[:4] for line in lines[1:]] == [[n, "claude", "Suspended", "0"] for n in names]
    assert all(line == line.rstrip() for line in lines)

    wide = cli("get", "agents", "-l", f"team={team}", "-o", "wide")
    assert wide.out.splitlines()[0].split()[5:9] == ["IMAGE", "NETWORK", "CONTAINER", "MEMORY"]

    as_json = json.loads(cli("get", "agents", "-l", f"team={team}", "-o", "json").out)
    assert as_json["kind"] == "AgentList" and [i["metadata"]["name"] for i in as_json["items"]] == names
    one = yaml.safe_load(cli("get", "agent", names[0], "-o", "yaml").out)
    assert one["metadata"]["labels"] == {"team": team}
    assert cli("get", "agents", "-l", f"team={team}", "-o", "name").out.split() == [f"agent/{n}" for n in names]

    listing = cli("get", "agents", "-l", f"team={team}", "-o", "yaml").out
    reapplied = cli("apply", "-f", "-", stdin=listing)
    assert reapplied.ok, reapplied
    assert reapplied.out.splitlines() == [f"agent/{n} unchanged" for n in names]

    assert "not found" in cli("get", "agent", f"{team}-none").one_error_line()
    assert "unknown resource type 'pods'" in cli("get", "pods").one_error_line()
    cli("delete", "agent", *names)


def test_get_watch_prints_changes_as_they_happen(cli: Cli) -> None:
    app = unique("cli-watch")
    first, second = f"{app}-1", f"{app}-2"
    assert cli("apply", "-f", "-", stdin=docs(manifest(first, {"app": app}, suspend=True))).ok
    watch = cli.popen("get", "agents", "-w", "-l", f"app={app}")
    try:
        watch.expect(lambda line: line.split()[:1] == ["NAME"])
        watch.expect(lambda line: line.split()[:3] == [first, "claude", "Suspended"])
        assert cli("apply", "-f", "-", stdin=docs(manifest(second, {"app": app}, suspend=True))).ok
        watch.expect(lambda line: line.split()[:3] == [second, "claude", "Suspended"])
        assert cli("delete", "agent", first).ok
        watch.expect(lambda line: line.split()[:3] == [first, "claude", "Deleted"])
    finally:
        assert watch.interrupt() == 0
    cli("delete", "agent", second)


def test_describe_shows_spec_status_conditions_and_events_without_secret_values(cli: Cli) -> None:
    name = unique("cli-describe")
    spec = docs(manifest(name, {"team": "cli"}, env={"API_KEY": "sk-cli-very-secret"}, resources={"memory": "80m"}))
    applied = cli("apply", "-f", "-", "--wait", "--timeout", "30", stdin=spec)
    assert applied.ok, applied
    result = cli("describe", "agent", name)
    assert result.ok, result
    assert "sk-cli-very-secret" not in result.out + result.err
    for expected in (
        f"Name:           {name}",
        "Labels:         team=cli",
        "Env:            API_KEY (set, value hidden)",
        "Resources:      memory 80m, cpu 0.5, pids 512",
        "Phase:          Running",
        "Conditions:",
        "Events:",
    ):
        assert expected in result.out, result
    assert any(line.split()[:3] == ["Ready", "True", "Running"] for line in result.out.splitlines()), result
    assert "Applied" in result.out, "the apply is one of the agent's events"
    cli("delete", "agent", name)


# --- delete ---------------------------------------------------------------------------------------------


def test_delete_by_name_and_by_file_waits_until_gone(cli: Cli, tmp_path: Path) -> None:
    a, b = unique("cli-delete"), unique("cli-delete")
    spec = tmp_path / "b.yaml"
    spec.write_text(docs(manifest(b, suspend=True)))
    assert cli("apply", "-f", "-", "--wait", stdin=docs(manifest(a))).ok
    assert cli("apply", "-f", str(spec)).ok

    result = cli("delete", "agent", a, "--wait", "--timeout", "30")
    assert result.ok, result
    assert result.out.splitlines()[0] == f"agent/{a} deleting"
    assert result.out.splitlines()[-1].startswith(f"agent/{a} deleted (")
    assert cli.agent(a) is None

    result = cli("delete", "-f", str(spec), "--wait")
    assert result.ok, result
    assert cli.agent(b) is None

    missing = cli("delete", "agent", a)
    assert f"agent {a!r} not found" in missing.one_error_line()
    assert cli("delete", "agent", a, "--ignore-not-found").ok


# --- errors ---------------------------------------------------------------------------------------------


def test_errors_are_one_clear_line_with_a_non_zero_exit(cli: Cli, tmp_path: Path) -> None:
    down = cli("get", "agents", "--server", f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the Parallax server" in down.one_error_line()

    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: parallax.ai/v1\nkind: Agent\nmetadata:\n  name: [oops\n")
    assert cli("apply", "-f", str(broken)).one_error_line().startswith(f"error: {broken}:5: invalid YAML")

    guessed = tmp_path / "guessed.yaml"
    guessed.write_text(docs(manifest("cli-guessed", suspend=True)).replace("labels: {}", "labels:\n    enabled: yes"))
    line = cli("apply", "-f", str(guessed)).one_error_line()
    assert line.startswith(f"error: {guessed}:6: metadata.labels.enabled: a string is expected"), line

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(
        docs(manifest("cli-valid-one", suspend=True), manifest("cli-invalid", resources={"memory": "lots"}))
    )
    result = cli("apply", "-f", str(invalid))
    first = result.one_error_line()
    row = invalid.read_text().splitlines().index("    memory: lots") + 1
    assert first.startswith(f"error: {invalid}:{row}: agent cli-invalid: spec.resources.memory: memory 'lots'"), first
    assert result.err.strip().splitlines()[-1] == "error: nothing was applied"
    assert cli.agent("cli-valid-one") is None

    forbidden = cli("apply", "-f", "-", stdin=docs(manifest("cli-forbidden", volumes=["/etc:/host-etc"])))
    assert "spec.volumes[0]" in forbidden.one_error_line()

    assert "no such file" in cli("apply", "-f", str(tmp_path / "absent.yaml")).one_error_line()


TOKEN = "cli-token-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def guarded_server(docker_daemon: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server with an API token that also follows a specs directory."""
    base = tmp_path_factory.mktemp("cli-guarded")
    specs = base / "specs"
    specs.mkdir()
    (specs / "first.yaml").write_text(docs(manifest("cli-dir-first", suspend=True)))
    env, settings = server_env(base, PARALLAX_API_TOKEN=TOKEN, PARALLAX_SPECS_DIR=str(specs))
    server = Server(env)
    asyncio.run(server.start())
    try:
        yield server, specs
    finally:
        stop(server, settings)


def test_token_comes_from_the_flag_or_the_environment(guarded_server: tuple[Server, Path]) -> None:
    server, _ = guarded_server
    anonymous = Cli(server.url)
    refused = anonymous("get", "agents")
    line = refused.one_error_line()
    assert "401" in line and "--token" in line and TOKEN not in refused.err
    assert anonymous("get", "agents", "--token", TOKEN).ok
    assert Cli(server.url, TOKEN)("get", "agents").ok


# --- live operations ------------------------------------------------------------------------------------


def test_logs_send_restart_and_top_work_on_a_running_agent(cli: Cli) -> None:
    name = unique("cli-live")
    spec = docs(manifest(name, command=["sh", "-c", "echo ready; exec cat"]))
    assert cli("apply", "-f", "-", "--wait", "--timeout", "30", stdin=spec).ok

    eventually(lambda: "ready" in cli("logs", name).out, what="the agent's first line")
    follow = cli.popen("logs", name, "-f", "--tail", "1")
    try:
        follow.expect(lambda line: line == "ready")
        message = "hello $(id) `uname` 'quoted' \"double\""
        sent = cli("send", name, message)
        assert sent.ok, sent
        assert sent.out.startswith(f"message sent to agent/{name}")
        follow.expect(lambda line: line == message)
    finally:
        assert follow.interrupt() == 0
    assert message in cli("logs", name, "--tail", "5").out

    top = cli("top")
    assert top.ok, top
    assert top.out.splitlines()[0].split()[:3] == ["NAME", "CPU", "MEMORY"]
    row = next(line for line in top.out.splitlines() if line.split()[:1] == [name])
    assert row.split()[3] == "64.0Mi", row

    before = cli.agent(name)
    assert before is not None
    restarted = cli("restart", name)
    assert restarted.ok and restarted.out.strip() == f"agent/{name} restarted", restarted
    eventually(
        lambda: (
            (cli.agent(name) or {}).get("status", {}).get("containerId") not in (None, before["status"]["containerId"])
        ),
        what="a new container",
    )
    assert "not found" in cli("send", f"{name}-nope", "hi").one_error_line()
    cli("delete", "agent", name)


# --- serve --specs-dir ----------------------------------------------------------------------------------


def test_serve_specs_dir_follows_file_edits(guarded_server: tuple[Server, Path]) -> None:
    server, specs = guarded_server
    cli = Cli(server.url, TOKEN)
    first, second = "cli-dir-first", unique("cli-dir")
    agent = eventually(lambda: cli.agent(first), what="the agent of a file present at start")
    assert agent["metadata"]["labels"]["parallax.ai/source"] == "specs-dir"
    assert agent["metadata"]["annotations"]["parallax.ai/source-file"] == "first.yaml"

    (specs / "first.yaml").write_text(docs(manifest(first, suspend=True, resources={"cpu": 1})))
    eventually(lambda: (cli.agent(first) or {}).get("metadata", {}).get("generation") == 2, what="the edit")

    (specs / "nested").mkdir()
    (specs / "nested" / "second.yaml").write_text(docs(manifest(second, suspend=True)))
    eventually(lambda: cli.agent(second), what="the agent of an added file")

    outsider = unique("cli-outsider")
    assert cli("apply", "-f", "-", stdin=docs(manifest(outsider, suspend=True))).ok
    (specs / "first.yaml").unlink()
    eventually(lambda: cli.agent(first) is None, what="the agent of a removed file to be pruned")
    assert cli.agent(second) is not None and cli.agent(outsider) is not None


# --- secrets -------------------------------------------------------------------------------------------


def test_create_get_and_delete_secret_never_print_a_value(cli: Cli, tmp_path: Path) -> None:
    name = unique("pxsc-cli")
    key_file = tmp_path / "token.txt"
    key_file.write_text("sk-from-file-51e0a2")
    created = cli(
        "create", "secret", name, "--from-literal", "apiKey=sk-literal-93bd1c", "--from-file", f"token={key_file}"
    )
    assert created.ok, created
    assert f"secret/{name} created (apiKey, token)" in created.out
    again = cli("create", "secret", name, "--from-literal", "apiKey=x")
    assert not again.ok and "already exists" in again.err
    agent = unique("pxsc-cli-agent")
    spec = docs(manifest(agent, env={"ANTHROPIC_API_KEY": {"secretKeyRef": {"name": name, "key": "apiKey"}}}))
    assert cli("apply", "-f", "-", "--wait", "--timeout", "30", stdin=spec).ok
    table = cli("get", "secrets")
    assert table.ok, table
    row = next(line.split() for line in table.out.splitlines() if line.startswith(name))
    assert row[:4] == [name, "apiKey,token", "1", agent], table
    as_json = cli("get", "secret", name, "-o", "json")
    assert json.loads(as_json.out)["usedBy"] == [agent]
    described = cli("describe", "agent", agent)
    assert f"ANTHROPIC_API_KEY (from secret {name}, key apiKey)" in described.out, described
    outputs = table.out + as_json.out + described.out + created.out + created.err
    assert "sk-literal-93bd1c" not in outputs and "sk-from-file-51e0a2" not in outputs
    assert cli("delete", "agent", agent).ok
    deleted = cli("delete", "secret", name)
    assert deleted.ok and f"secret/{name} deleted" in deleted.out
    gone = cli("delete", "secret", name)
    assert not gone.ok and "not found" in gone.err
    bad = cli("create", "secret", "Bad_Name", "--from-literal", "k=sk-literal-93bd1c")
    assert not bad.ok and "metadata.name" in bad.err and "sk-literal-93bd1c" not in bad.err
