"""Every file a Dockerfile COPYs or ADDs from its build context is in git, so a fresh clone can build it.

The contexts are the ones the build tools send: ``parallax images build`` (``api/cli/images.py``) and a
plain ``docker build images/<name>`` use ``images/<name>/``; ``deploy/build-image.sh`` stages a temporary
context from the ``cp -r ... "$context/"`` line it runs, plus what it writes there itself. The check once
missed nothing and still the base image could not be built from a clone: ``.gitignore``'s ``build/`` kept
``images/base/build/`` out of git.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Inputs that are not in git because the build tooling makes them before the build starts, by
# (context, name in the context), with the reason; each names the script that makes it and a string
# of that script that shows it does (so the list cannot outlive the code).
GENERATED = {
    ("images/testing", "busybox"): (
        "scripts/setup.sh",
        'cp /bin/busybox "$ctx/busybox"',
        "a copy of the host's static busybox (also staged by `parallax images build testing`)",
    ),
    ("deploy", "requirements.txt"): (
        "deploy/build-image.sh",
        '"$context/requirements.txt"',
        "written from pyproject.toml's dependencies",
    ),
    ("deploy", "wheels"): (
        "deploy/build-image.sh",
        '--wheel-dir "$context/wheels"',
        "the dependencies as wheels, made with the host's pip",
    ),
}


@dataclass(frozen=True)
class Copy:
    dockerfile: str
    line: int
    source: str


def dockerfile_copy_sources(text: str, dockerfile: str) -> list[Copy]:
    """The context sources of every COPY/ADD (not ``--from=`` a stage or image), continuation lines joined."""
    sources: list[Copy] = []
    logical, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        instruction, _, rest = logical.partition(" ")
        logical = ""
        if instruction.upper() not in ("COPY", "ADD"):
            continue
        rest = rest.strip()
        flags = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if any(flag.startswith("--from=") for flag in flags):
            continue
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        sources += [Copy(dockerfile, start, source) for source in words[:-1]]
    return sources


def deploy_context(repo: Path) -> dict[str, str]:
    """What ``deploy/build-image.sh`` copies into its staged context: name there -> path in the repo."""
    script = (repo / "deploy" / "build-image.sh").read_text()
    match = re.search(r'^cp -r (.+?) "\$context/"$', script, re.MULTILINE)
    assert match, 'deploy/build-image.sh no longer stages its context with `cp -r ... "$context/"`'
    return {Path(path).name: path for path in shlex.split(match.group(1))}


def build_contexts(repo: Path) -> dict[str, tuple[str, dict[str, str] | None]]:
    """Each Dockerfile (repo path) -> its context's name and, for a staged context, its name -> repo path map."""
    contexts: dict[str, tuple[str, dict[str, str] | None]] = {}
    for dockerfile in sorted((repo / "images").glob("*/Dockerfile")):
        contexts[dockerfile.relative_to(repo).as_posix()] = (dockerfile.parent.relative_to(repo).as_posix(), None)
    for dockerfile in sorted((repo / "deploy").rglob("Dockerfile*")):
        relative = dockerfile.relative_to(repo).as_posix()
        assert relative == "deploy/Dockerfile", f"{relative}: which build context does it use? add it to this test"
        contexts[relative] = ("deploy", deploy_context(repo))
    return contexts


def untracked_build_inputs(repo: Path, tracked: set[str]) -> list[str]:
    """COPY/ADD sources that no tracked file provides, given the tree's ``git ls-files`` (as a set)."""

    def provided(path: str) -> bool:
        path = path.rstrip("/")
        if any(ch in path for ch in "*?["):
            return any(fnmatch.fnmatchcase(file, path) for file in tracked)
        return path in tracked or any(file.startswith(path + "/") for file in tracked)

    missing = []
    for dockerfile, (context, staged) in build_contexts(repo).items():
        for copy in dockerfile_copy_sources((repo / dockerfile).read_text(), dockerfile):
            name = copy.source.removeprefix("./").rstrip("/")
            if (context, name) in GENERATED:
                continue
            if staged is not None:
                top, _, below = name.partition("/")
                if top not in staged:
                    missing.append(f"{dockerfile}:{copy.line}: {copy.source} is not staged by deploy/build-image.sh")
                    continue
                path = staged[top] + (f"/{below}" if below else "")
            else:
                path = f"{context}/{name}"
            if not provided(path):
                missing.append(f"{dockerfile}:{copy.line}: COPY/ADD {copy.source} -> {path} is not tracked by git")
    return missing


def git_ls_files(repo: Path) -> set[str]:
    result = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return set(filter(None, result.stdout.split("\0")))


def test_every_file_a_dockerfile_copies_is_tracked_by_git() -> None:
    missing = untracked_build_inputs(REPO, git_ls_files(REPO))
    assert not missing, "a fresh clone cannot build these images:\n" + "\n".join(missing)


def test_the_generated_inputs_are_really_generated_by_the_build_scripts() -> None:
    for (context, name), (script, evidence, reason) in GENERATED.items():
        assert evidence in (REPO / script).read_text(), f"{context}/{name} ({reason}): {script} no longer makes it"


def test_the_check_finds_copies_of_untracked_files() -> None:
    dockerfile = (
        'FROM x AS a\nCOPY --chown=1:1 build/ \\\n  other.sh /dst/\nCOPY --from=a /opt /opt\nADD ["j s", "/d"]\n'
    )
    sources = [copy.source for copy in dockerfile_copy_sources(dockerfile, "Dockerfile")]
    assert sources == ["build/", "other.sh", "j s"]
    tracked = git_ls_files(REPO) - {f for f in git_ls_files(REPO) if f.startswith("images/base/build/")}
    missing = untracked_build_inputs(REPO, tracked)
    assert missing and all("images/base/build" in line for line in missing), missing
