"""``scripts/setup.sh`` uses root only for what needs it, through sudo only when it is not root.

The script runs for real in a copy of the repository, on a ``PATH`` of stand-ins: ``id`` says which user
it is, ``sudo`` (present or not) logs and runs its command as "root", and ``apt-get``, ``dockerd``,
``docker``, ``usermod``, ``setfacl`` and ``getent`` log who called them and change a little state
(installing docker.io puts ``docker`` and ``dockerd`` on the PATH; ``dockerd`` makes ``docker info``
answer; ``setfacl`` gives the user the socket). Real tools (bash, sed, ...) are linked in as they are.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness import REPO

REAL_TOOLS = (
    "bash",
    "sh",
    "env",
    "sed",
    "dirname",
    "basename",
    "cat",
    "cp",
    "cmp",
    "cut",
    "grep",
    "tr",
    "tail",
    "sleep",
    "touch",
    "rm",
    "mkdir",
    "ls",
    "head",
    "sha256sum",
    "setsid",
    "nohup",
    "mktemp",
)

FAKES = {
    "id": """
        case "$1" in
            -u) echo "$FAKE_UID" ;;
            -un) echo "$FAKE_USER" ;;
            -nG) echo "$FAKE_GROUPS" ;;
            *) exit 2 ;;
        esac""",
    "sudo": """
        echo "sudo $*" >>"$STATE/log"
        FAKE_UID=0 FAKE_USER=root FAKE_GROUPS=root exec "$@\"""",
    "apt-get": """
        echo "apt-get uid=$(id -u) $*" >>"$STATE/log"
        if [ "$1" = install ]; then
            for package in "$@"; do
                case "$package" in
                    docker.io) cp "$FAKES/docker" "$FAKES/dockerd" "$BIN/" ;;
                    acl) cp "$FAKES/setfacl" "$BIN/" ;;
                esac
            done
        fi""",
    "getent": """
        [ "$1 $2" = "group docker" ] && echo "docker:x:105:\"""",
    "usermod": """
        echo "usermod uid=$(id -u) $*" >>"$STATE/log\"""",
    "python3": """
        exit 0""",
}
# Installed only by apt-get (or present from the start when a scenario says so).
PACKAGED = {
    "docker": """
        [ "$1" = info ] || { echo "docker uid=$(id -u) $*" >>"$STATE/log"; exit 0; }
        [ -e "$STATE/running" ] || { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
        if [ "$(id -u)" != 0 ] && [ ! -e "$STATE/acl" ] && [ -z "$FAKE_SESSION_DOCKER" ]; then
            echo "permission denied while trying to connect to the Docker daemon socket" >&2
            exit 1
        fi""",
    "dockerd": """
        echo "dockerd uid=$(id -u)" >>"$STATE/log"
        touch "$STATE/running"
        exec sleep 3""",
    "setfacl": """
        echo "setfacl uid=$(id -u) $*" >>"$STATE/log"
        touch "$STATE/acl\"""",
}


@dataclass
class Run:
    code: int
    output: str
    log: list[str]

    def calls(self, program: str) -> list[str]:
        return [line for line in self.log if line.split()[0] == program]


def setup_sh(
    tmp_path: Path,
    *,
    uid: int,
    sudo: bool,
    installed: bool,
    running: bool,
    in_docker_group: bool = False,
    has_setfacl: bool = False,
) -> Run:
    repo, bin_dir, fakes, state = (tmp_path / d for d in ("repo", "bin", "fakes", "state"))
    for directory in (repo / "scripts", repo / ".venv" / "bin", bin_dir, fakes, state):
        directory.mkdir(parents=True)
    for script in ("setup.sh", "as-root.sh"):
        shutil.copy(REPO / "scripts" / script, repo / "scripts" / script)
    for helper in (REPO / "scripts").glob("setup-*.sh"):  # their own tests run them for real
        (repo / "scripts" / helper.name).write_text("#!/usr/bin/env bash\nexit 0\n")
    (repo / "pyproject.toml").write_text("")
    for tool in ("pip", "parallax"):
        (repo / ".venv" / "bin" / tool).write_text("#!/bin/sh\n")
        (repo / ".venv" / "bin" / tool).chmod(0o755)
    time.sleep(0.01)
    (repo / ".venv" / ".installed").touch()
    for tool in REAL_TOOLS:
        real = shutil.which(tool)
        assert real, tool
        (bin_dir / tool).symlink_to(real)
    scripts = {**FAKES, **PACKAGED}
    if not sudo:
        del scripts["sudo"]
    for name, body in scripts.items():
        target = (bin_dir if name in FAKES else fakes) / name
        target.write_text("#!/bin/sh\n" + textwrap.dedent(body).strip() + "\n")
        target.chmod(0o755)
    if installed:
        shutil.copy(fakes / "docker", bin_dir / "docker")
        shutil.copy(fakes / "dockerd", bin_dir / "dockerd")
    if has_setfacl:
        shutil.copy(fakes / "setfacl", bin_dir / "setfacl")
    if running:
        (state / "running").touch()
    user = "root" if uid == 0 else "pxuser"
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "BIN": str(bin_dir),
        "FAKES": str(fakes),
        "STATE": str(state),
        "FAKE_UID": str(uid),
        "FAKE_USER": user,
        "FAKE_GROUPS": f"{user} docker" if in_docker_group else user,
        "FAKE_SESSION_DOCKER": "1" if in_docker_group else "",
        "PARALLAX_DOCKERD_LOG": str(state / "dockerd.log"),
        "PARALLAX_SBIN_PATH": str(bin_dir),  # not the real /usr/sbin, where this machine's dockerd is
        "DOCKER_SOCKET": str(state / "docker.sock"),
    }
    result = subprocess.run(
        [str(bin_dir / "bash"), str(repo / "scripts" / "setup.sh"), "--no-images"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = (state / "log").read_text().splitlines() if (state / "log").exists() else []
    return Run(result.returncode, result.stdout + result.stderr, log)


def test_as_root_without_sudo_it_installs_and_starts_docker_itself(tmp_path: Path) -> None:
    run = setup_sh(tmp_path, uid=0, sudo=False, installed=False, running=False)
    assert run.code == 0, run
    assert run.calls("sudo") == []
    assert any("install" in call and "docker.io" in call for call in run.calls("apt-get")), run
    assert all("uid=0" in call for call in run.calls("apt-get") + run.calls("dockerd")), run
    assert run.calls("dockerd"), run
    assert run.calls("usermod") == run.calls("setfacl") == [], "root needs no Docker access given"
    assert "setup: ready" in run.output


def test_as_root_with_everything_in_place_it_changes_nothing(tmp_path: Path) -> None:
    run = setup_sh(tmp_path, uid=0, sudo=True, installed=True, running=True)
    assert run.code == 0, run
    assert run.log == [], run


def test_as_a_user_in_the_docker_group_with_everything_in_place_it_never_calls_sudo(tmp_path: Path) -> None:
    run = setup_sh(tmp_path, uid=1000, sudo=True, installed=True, running=True, in_docker_group=True)
    assert run.code == 0, run
    assert run.log == [], run
    assert "setup: .venv up to date" in run.output, "the venv step ran as the user"


def test_as_a_user_with_sudo_only_the_root_steps_go_through_sudo(tmp_path: Path) -> None:
    run = setup_sh(tmp_path, uid=1000, sudo=True, installed=False, running=False)
    assert run.code == 0, run
    sudo = run.calls("sudo")
    assert len(sudo) == 5, run  # docker.io, dockerd, usermod, acl, setfacl
    assert "docker.io" in sudo[0] and "dockerd" in sudo[1], run
    assert sudo[2].endswith("usermod -aG docker pxuser"), run
    assert "acl" in sudo[3] and sudo[4].endswith(f"setfacl -m u:pxuser:rw {tmp_path}/state/docker.sock"), run
    root_only = run.calls("apt-get") + run.calls("dockerd") + run.calls("usermod") + run.calls("setfacl")
    assert root_only and all("uid=0" in call for call in root_only), run
    assert "may use Docker" in run.output and "setup: ready" in run.output


def test_as_a_user_whose_docker_runs_it_only_gives_access(tmp_path: Path) -> None:
    run = setup_sh(tmp_path, uid=1000, sudo=True, installed=True, running=True, has_setfacl=True)
    assert run.code == 0, run
    assert [call.split()[1] for call in run.calls("sudo")] == ["usermod", "setfacl"], run


def test_as_a_user_without_sudo_it_says_what_to_do_and_changes_nothing(tmp_path: Path) -> None:
    run = setup_sh(tmp_path, uid=1000, sudo=False, installed=False, running=False)
    assert run.code != 0
    assert "needs root, and sudo is not installed: run this as root, or install sudo" in run.output, run
    assert run.log == [], run


def test_the_readme_commands_need_no_sudo() -> None:
    readme = (REPO / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert commands == ["bash scripts/setup.sh && .venv/bin/parallax serve", "bash scripts/test.sh"], commands
