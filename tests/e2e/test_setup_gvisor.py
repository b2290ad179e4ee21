"""``scripts/setup-gvisor.sh`` for real (setup.sh ran it, so runsc is installed): the host daemon lists
the runtime; against a daemon.json of its own and a stand-in dockerd (a process that records SIGHUP), it
merges the runtime in keeping every other key, reloads with SIGHUP, and a second run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.docker

RECORD_HUP = """
import signal, sys, time
def hup(*_):
    with open(sys.argv[1], "a") as f:
        f.write("HUP\\n")
signal.signal(signal.SIGHUP, hup)
open(sys.argv[1], "a").close()
while True:
    time.sleep(1)
"""


def run_setup(tmp_path: Path, daemon_json: Path, pidfile: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARALLAX_DOCKER_DAEMON_JSON": str(daemon_json), "PARALLAX_DOCKER_PIDFILE": str(pidfile)}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "setup-gvisor.sh")], env=env, capture_output=True, text=True, timeout=60
    )


def test_host_daemon_lists_runsc_with_the_working_arguments() -> None:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    runtimes = json.loads(out.stdout)
    assert runtimes["runsc"]["runtimeArgs"] == ["--network=host", "--platform=ptrace"], runtimes


def test_it_merges_the_runtime_reloads_once_and_then_changes_nothing(tmp_path: Path) -> None:
    daemon_json = tmp_path / "docker" / "daemon.json"
    daemon_json.parent.mkdir()
    daemon_json.write_text(json.dumps({"log-level": "warn", "runtimes": {"other": {"path": "/bin/other"}}}))
    hups, pidfile = tmp_path / "hups", tmp_path / "docker.pid"
    stand_in = subprocess.Popen([sys.executable, "-c", RECORD_HUP, str(hups)])
    try:
        while not hups.exists():
            time.sleep(0.05)
        pidfile.write_text(str(stand_in.pid))
        first = run_setup(tmp_path, daemon_json, pidfile)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "reloading dockerd" in first.stdout
        config = json.loads(daemon_json.read_text())
        assert config["log-level"] == "warn" and config["runtimes"]["other"] == {"path": "/bin/other"}
        assert config["runtimes"]["runsc"] == {
            "path": "/usr/bin/runsc",
            "runtimeArgs": ["--network=host", "--platform=ptrace"],
        }
        time.sleep(0.3)
        assert hups.read_text().splitlines() == ["HUP"]
        before = daemon_json.stat().st_mtime_ns
        second = run_setup(tmp_path, daemon_json, pidfile)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "reloading" not in second.stdout and daemon_json.stat().st_mtime_ns == before
        assert hups.read_text().splitlines() == ["HUP"]
    finally:
        stand_in.kill()
        stand_in.wait()
