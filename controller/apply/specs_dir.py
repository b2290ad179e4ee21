"""``parallax serve --specs-dir DIR``: keep the agents described by the files in DIR applied.

A file added or changed is applied (all of its documents, or none of them); a document removed from a
file, or a whole file removed, prunes its agents. Only agents that came from this directory are ever
touched: they carry the label ``parallax.ai/source=specs-dir`` and the annotation
``parallax.ai/source-file`` naming their file. An agent of the same name created some other way is
left alone (and the file's problem is logged).

The directory is polled (no inotify needed, works on any filesystem and in containers). A file is read
only once its size and modification time held still for one poll, and a removal counts only when it is
seen twice, so an editor saving a file in several steps never prunes agents by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from controller.apply.applier import Applier, ApplyReport
from controller.apply.yaml_loader import (
    MAX_BYTES,
    Document,
    YamlError,
    expand_lists,
    load_documents,
    load_json_documents,
)
from controller.model.agent import Agent
from controller.store.interface import StoreError

log = logging.getLogger("parallax.specs_dir")

SOURCE_LABEL = "parallax.ai/source"
SOURCE_VALUE = "specs-dir"
FILE_ANNOTATION = "parallax.ai/source-file"
SUFFIXES = (".yaml", ".yml", ".json")
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class FileState:
    mtime_ns: int
    size: int


def from_specs_dir(agent: Agent, file: str | None = None) -> bool:
    """Whether ``agent`` came from the specs directory (from ``file`` in it, when given)."""
    if agent.metadata.labels.get(SOURCE_LABEL) != SOURCE_VALUE:
        return False
    return file is None or agent.metadata.annotations.get(FILE_ANNOTATION) == file


class SpecsDirFollower:
    def __init__(self, directory: str | os.PathLike[str], applier: Applier, poll_seconds: float = POLL_SECONDS) -> None:
        self.root = Path(directory).resolve()
        self.applier = applier
        self.poll_seconds = poll_seconds
        self.errors: dict[str, list[str]] = {}
        """The problems of each file that could not be applied, as last seen (for logs and tests)."""
        self._previous: dict[str, FileState] | None = None
        self._handled: dict[str, str] = {}
        self._handled_state: dict[str, FileState] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"specs directory {self.root} does not exist")
        log.info("following the specs directory %s", self.root)
        await self.sync()
        self._task = asyncio.create_task(self._loop(), name="specs-dir")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.sync()
            except StoreError as exc:
                log.warning("specs directory: store unavailable, retrying: %s", exc)
            except Exception:
                log.exception("specs directory: sync failed")

    def _scan(self) -> dict[str, FileState]:
        found: dict[str, FileState] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                if filename.startswith(".") or not filename.endswith(SUFFIXES):
                    continue
                path = Path(dirpath) / filename
                try:
                    st = path.stat()
                except OSError:
                    continue
                found[path.relative_to(self.root).as_posix()] = FileState(st.st_mtime_ns, st.st_size)
        return found

    async def sync(self) -> None:
        """One pass: apply settled new or changed files, prune the agents of files that are gone."""
        first = self._previous is None
        current = await asyncio.to_thread(self._scan)
        previous = self._previous or {}
        for rel, state in sorted(current.items()):
            if not first and previous.get(rel) != state:
                continue  # still changing, or just appeared: read it once it holds still
            if self._handled_state.get(rel) != state:
                await self._sync_file(rel, state)
        if first:
            known = {
                agent.metadata.annotations.get(FILE_ANNOTATION, "")
                for agent in await self.applier.store.list()
                if from_specs_dir(agent)
            }
            gone = {rel for rel in known if rel not in current}
        else:
            gone = {rel for rel in self._handled if rel not in current and rel not in previous}
        for rel in sorted(gone):
            await self._remove_file(rel)
        self._previous = current

    async def _sync_file(self, rel: str, state: FileState) -> None:
        path = self.root / rel
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            self._report(rel, [f"cannot be read: {exc}"])
            return
        digest = hashlib.sha256(data).hexdigest()
        if self._handled.get(rel) == digest:
            self._mark(rel, digest, state)  # touched, not changed
            return
        if len(data) > MAX_BYTES:
            self._report(rel, [f"is larger than {MAX_BYTES} bytes"])
            self._mark(rel, digest, state)
            return
        try:
            documents = self._documents(rel, data)
        except YamlError as exc:
            self._report(rel, [str(problem) for problem in exc.problems])
            self._mark(rel, digest, state)
            return
        report = await self.applier.apply(
            documents,
            prune=lambda agent: from_specs_dir(agent, rel),
            prune_cause=f"no longer in {rel}",
            stamp=lambda agent: _stamp(agent, rel),
            guard=lambda stored: _guard(stored, rel),
        )
        if report.failed:
            self._report(rel, _problems(report))
            if all(e.kind in ("invalid", "forbidden") for r in report.failed for e in r.errors):
                self._mark(rel, digest, state)  # invalid until the file changes; conflicts are retried
            return
        self._mark(rel, digest, state)
        self.errors.pop(rel, None)
        for result in report.results + report.pruned:
            if result.outcome != "unchanged":
                log.info("specs directory: %s: agent %s %s", rel, result.name, result.outcome)

    def _documents(self, rel: str, data: bytes) -> list[Document]:
        if rel.endswith(".json"):
            return expand_lists(load_json_documents(data))
        return expand_lists(load_documents(data))

    async def _remove_file(self, rel: str) -> None:
        report = await self.applier.apply(
            [],
            prune=lambda agent: from_specs_dir(agent, rel),
            prune_cause=f"{rel} was removed from the specs directory",
        )
        if report.failed:
            self._report(rel, _problems(report))
            return
        self._handled.pop(rel, None)
        self._handled_state.pop(rel, None)
        self.errors.pop(rel, None)
        for result in report.pruned:
            log.info("specs directory: %s removed: agent %s pruned", rel, result.name)

    def _mark(self, rel: str, digest: str, state: FileState) -> None:
        """This content of ``rel`` is dealt with (applied, or refused until the file changes)."""
        self._handled[rel] = digest
        self._handled_state[rel] = state

    def _report(self, rel: str, problems: list[str]) -> None:
        if self.errors.get(rel) != problems:
            for problem in problems:
                log.warning("specs directory: %s: %s", rel, problem)
        self.errors[rel] = problems


def _problems(report: ApplyReport) -> list[str]:
    out = []
    for result in report.failed:
        for error in result.errors:
            where = f"line {error.line}: " if error.line is not None else ""
            what = f"{error.field}: " if error.field else ""
            out.append(f"{where}{what}{error.message}")
    return out


def _stamp(agent: Agent, rel: str) -> Agent:
    metadata = replace(
        agent.metadata,
        labels={**agent.metadata.labels, SOURCE_LABEL: SOURCE_VALUE},
        annotations={**agent.metadata.annotations, FILE_ANNOTATION: rel},
    )
    return Agent(metadata, agent.spec)


def _guard(stored: Agent, rel: str) -> str | None:
    if not from_specs_dir(stored):
        return f"agent {stored.name!r} exists and was not created from the specs directory; it is left alone"
    owner = stored.metadata.annotations.get(FILE_ANNOTATION)
    if owner != rel:
        return f"agent {stored.name!r} is already defined by {owner}"
    return None
