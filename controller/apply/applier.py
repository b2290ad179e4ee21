"""Applying a set of Agent documents to the store, like ``kubectl apply``: each document is created,
configured or left unchanged, and agents that left the set may be pruned.

``kind: Secret`` documents are applied too: admitted with the others (one invalid document stops them
all), written before the agents (so an agent of the same set finds its secret at once), each in its own
write: not in the agents' commit. Their values are never in the report; prune never deletes a Secret.

All-or-nothing by default: every document is admitted and checked against the store first, and
nothing is written if any of them fails. Applies are serialized (one lock), so the HTTP ``/apply``
and the specs-directory follower never interleave. Writes go through the store only; the reconciler
does the rest, and ``plan`` says what that will be.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller.admission.admit import AdmissionError, admit, asks_for_gvisor
from controller.admission.schema import MANIFEST_KEYS, is_manifest
from controller.admission.secret import parse_secret
from controller.apply.plan import Plan, Render, plan_apply, plan_delete
from controller.apply.yaml_loader import Document
from controller.config import Settings
from controller.model.agent import REDACTED, Agent, container_name, keep_stored_secrets
from controller.model.errors import AgentError
from controller.model.secret import Secret, is_secret_document, references
from controller.reconcile.decide import Operation
from controller.store.interface import AlreadyExists, Conflict, NotFound, Store, StoreError, StoreUnavailable, Write

log = logging.getLogger("parallax.apply")

ErrorKind = Literal["invalid", "forbidden", "conflict", "unavailable"]
ResultOutcome = Literal["created", "configured", "unchanged", "pruned", "error", "skipped"]

SYSTEM_PREFIX = "parallax.ai/"
"""Labels and annotations under this prefix are the system's (restartedAt, source tracking): a document
that does not mention them keeps them, so re-applying a file after ``parallax restart`` changes nothing."""
SERVER_SET_METADATA = ("uid", "generation", "resourceVersion", "creationTimestamp", "deletionTimestamp")

Planner = Callable[[str, Agent | None], Awaitable[list[Operation]]]
"""The operations reconciling a record (as it would be) would make now: ``Reconciler.plan``."""


@dataclass(frozen=True)
class DocError:
    message: str
    field: str | None = None
    line: int | None = None
    kind: ErrorKind = "invalid"

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "line": self.line, "message": self.message}


@dataclass
class DocResult:
    index: int
    line: int | None
    name: str | None = None
    outcome: ResultOutcome = "skipped"
    plan: Plan | None = None
    operations: list[Operation] | None = None
    """In a dry run with a planner: the reconciler's own operations for the record as it would be."""
    operations_error: str | None = None
    errors: list[DocError] = field(default_factory=list)
    submitted: Agent | None = None
    stored: Agent | None = None
    agent: Agent | None = None
    """The record after the write (None in a dry run or when nothing was written)."""
    doc: Document | None = field(default=None, repr=False)
    kind: str = "Agent"
    secret: Secret | None = field(default=None, repr=False)
    """A ``kind: Secret`` document's Secret as admitted (values: never in ``to_dict``)."""
    secret_view: dict[str, Any] | None = None
    """The Secret as the API shows it (keys and versions) after the write."""

    def fail(
        self, message: str, field: str | None = None, line: int | None = None, kind: ErrorKind = "invalid"
    ) -> None:
        self.errors.append(DocError(message, field, line if line is not None else self.line, kind))
        self.outcome = "error"

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "index": self.index,
            "kind": self.kind,
            "name": self.name,
            "line": self.line,
            "outcome": self.outcome,
        }
        if self.secret_view is not None:
            body["secret"] = self.secret_view
        if self.plan is not None:
            body["plan"] = self.plan.to_dict()
        if self.operations is not None:
            body["operations"] = [{"operation": o.kind, "target": o.target, "cause": o.cause} for o in self.operations]
        if self.operations_error is not None:
            body["operationsError"] = self.operations_error
        if self.errors:
            body["errors"] = [e.to_dict() for e in self.errors]
        if self.agent is not None:
            body["agent"] = self.agent.to_manifest(redact=True)
        return body


@dataclass
class ApplyReport:
    dry_run: bool
    results: list[DocResult]
    pruned: list[DocResult] = field(default_factory=list)
    prune_skipped: str | None = None

    @property
    def failed(self) -> list[DocResult]:
        return [r for r in self.results + self.pruned if r.errors]

    @property
    def written(self) -> bool:
        return not self.dry_run and any(
            r.outcome in ("created", "configured", "pruned") for r in self.results + self.pruned
        )

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results + self.pruned:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        return counts


def _document_name(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    metadata = body.get("metadata") if any(k in body for k in MANIFEST_KEYS) else body
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def _without_server_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Status and server-set metadata are ignored on apply (a ``get -o yaml`` output applies as is)."""
    body = copy.copy(body)
    body.pop("status", None)
    if any(k in body for k in MANIFEST_KEYS):
        if isinstance(body.get("metadata"), dict):
            body["metadata"] = {k: v for k, v in body["metadata"].items() if k not in SERVER_SET_METADATA}
    else:
        body.pop("resourceVersion", None)
    return body


def _keep_system_metadata(submitted: Agent, stored: Agent) -> Agent:
    labels = {**{k: v for k, v in stored.metadata.labels.items() if k.startswith(SYSTEM_PREFIX)}}
    annotations = {**{k: v for k, v in stored.metadata.annotations.items() if k.startswith(SYSTEM_PREFIX)}}
    if not labels and not annotations:
        return submitted
    metadata = replace(
        submitted.metadata,
        labels={**labels, **submitted.metadata.labels},
        annotations={**annotations, **submitted.metadata.annotations},
    )
    return Agent(metadata, submitted.spec)


Stamp = Callable[[Agent], Agent]
"""Adds the caller's labels or annotations to an admitted agent (the specs-dir source tracking)."""
Guard = Callable[[Agent], str | None]
"""Why an existing agent may not be changed by this caller, or None when it may."""


class Applier:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        render: Render,
        planner: Planner | None = None,
        runtime_classes: Callable[[], Awaitable[frozenset[str] | None]] | None = None,
    ) -> None:
        self.store = store
        self.runtime_classes = runtime_classes
        self.settings = settings
        self.render = render
        self.planner = planner
        self.lock = asyncio.Lock()

    async def apply(
        self,
        documents: list[Document],
        *,
        dry_run: bool = False,
        atomic: bool = True,
        prune: Callable[[Agent], bool] | None = None,
        prune_cause: str = "no longer in the applied set",
        stamp: Stamp | None = None,
        guard: Guard | None = None,
    ) -> ApplyReport:
        """Admit, plan and (unless ``dry_run``) write ``documents``; then prune what ``prune`` selects."""
        async with self.lock:
            stored_all = {agent.name: agent for agent in await self.store.list()}
            secrets = [self._admit_secret(doc) for doc in documents if is_secret_document(doc.body)]
            await self._plan_secrets(secrets)
            agent_docs = [doc for doc in documents if not is_secret_document(doc.body)]
            classes = None
            if self.runtime_classes is not None and any(asks_for_gvisor(d.body, self.settings) for d in agent_docs):
                classes = await self.runtime_classes()
            results = [self._admit(doc, stamp, list(stored_all.values()), classes) for doc in agent_docs]
            self._check_against_store(results, stored_all, guard)
            report = ApplyReport(dry_run, results)
            failed = [r for r in [*secrets, *results] if r.errors]
            if failed and atomic:
                for result in secrets:
                    if not result.errors:
                        result.outcome = "skipped"
            if not dry_run and not (failed and atomic):
                await self._write_secrets(secrets, stored_all)
            report.results = sorted([*secrets, *results], key=lambda r: r.index)
            results = [r for r in report.results if r.kind == "Agent"]
            if failed and atomic:
                for result in results:
                    if not result.errors:
                        result.outcome = "skipped"
                        result.plan = None
                report.prune_skipped = "a document failed, so nothing was applied"
                return report
            pruned = self._prunable(stored_all, results, prune, prune_cause) if prune is not None else []
            if dry_run:
                report.pruned = pruned
                await self._plan_operations([*results, *pruned])
            elif atomic:
                await self._write_together(results, pruned, report, prune_cause)
            else:
                for result in results:
                    if not result.errors:
                        await self._write(result)
                if prune is not None and report.failed:
                    report.prune_skipped = "a document failed, so nothing was pruned"
                elif prune is not None:
                    report.pruned = [result for result in pruned if await self._delete(result, prune_cause)]
            return report

    async def _plan_operations(self, results: list[DocResult]) -> None:
        """For a dry run: what the reconciler itself would do with each record as it would be written."""
        if self.planner is None:
            return
        for result in results:
            if result.errors or result.plan is None or result.name is None:
                continue
            try:
                result.operations = await self.planner(result.name, as_written(result))
            except AgentError as exc:
                result.operations_error = f"{exc.code}: {exc.message}"

    async def _write_together(
        self, results: list[DocResult], pruned: list[DocResult], report: ApplyReport, cause: str
    ) -> None:
        """Every change and every prune in one store commit, or none of them: a write made meanwhile by
        someone else (a direct PUT, say) that one of them now conflicts with stops them all."""
        changing = [r for r in results if r.plan is not None and r.plan.outcome in ("created", "configured")]
        # Each write names the record it was planned from: a change to it queued meanwhile by someone else
        # (a PUT, a delete) is a conflict, never silently overwritten. The controller's status writes are not.
        writes = [
            Write(
                "create" if r.plan.outcome == "created" else "replace",
                r.submitted.name,
                r.submitted,
                planned_from=r.stored,
            )
            for r in changing
            if r.plan is not None and r.submitted is not None
        ] + [Write("delete", r.name or "", planned_from=r.stored) for r in pruned]
        try:
            written = await self.store.write_all(writes)
        except StoreError as exc:
            kind: ErrorKind = "unavailable" if isinstance(exc, StoreUnavailable) else "conflict"
            culprit = (changing + pruned)[exc.index] if exc.index is not None else None
            for result in results:
                if result is culprit:
                    result.fail(f"{exc}; nothing was applied: apply again", kind=kind)
                elif culprit is None:
                    result.fail(f"{exc}; nothing was applied", kind=kind)
                else:
                    result.outcome, result.plan = "skipped", None
            if any(p is culprit for p in pruned):
                assert culprit is not None
                culprit.fail(f"{exc}; nothing was applied: apply again", kind=kind)
                report.pruned = [culprit]
            report.prune_skipped = "the write failed, so nothing was applied or pruned"
            return
        for result, agent in zip(changing + pruned, written, strict=True):
            result.agent = agent
        for result in results:
            if result.agent is None and result.plan is not None:
                result.agent = result.stored  # unchanged
        events = []
        for result in changing:
            assert result.plan is not None and result.agent is not None
            message = "; ".join(str(step) for step in result.plan.steps) or result.plan.outcome
            events.append(self._event(result.agent, "Applied", f"{result.plan.outcome} by apply: {message}"))
        for result in pruned:
            assert result.agent is not None
            events.append(self._event(result.agent, "Pruned", f"deleted by apply: {cause}"))
        await asyncio.gather(*events)  # one commit for all of them
        report.pruned = pruned

    def _admit_secret(self, doc: Document) -> DocResult:
        secret, errors = parse_secret(_without_server_fields(doc.body))
        result = DocResult(doc.index, doc.line, secret.name or None, doc=doc, kind="Secret", secret=secret)
        for problem in doc.problems:
            result.fail(problem.message, problem.field, problem.line)
        for error in errors:
            result.fail(error.message, error.field, doc.line_of(error.field))
        return result

    async def _plan_secrets(self, results: list[DocResult]) -> None:
        """created, configured (data or labels differ) or unchanged, against the stored Secrets."""
        first: dict[str, int] = {}
        for result in results:
            if result.errors or result.secret is None:
                continue
            name = result.secret.name
            if name in first:
                result.fail(f"secret {name!r} is also defined by document {first[name]}", kind="conflict")
                continue
            first[name] = result.index
            try:
                stored: Secret | None = await self.store.get_secret(name)
            except NotFound:
                stored = None
            except StoreError as exc:
                result.fail(str(exc), kind="unavailable")
                continue
            if stored is None:
                result.outcome = "created"
            elif (stored.data, stored.labels) != (result.secret.data, result.secret.labels):
                result.outcome = "configured"
            else:
                result.outcome = "unchanged"

    async def _write_secrets(self, results: list[DocResult], agents: dict[str, Agent]) -> None:
        for result in results:
            secret = result.secret
            if result.errors or secret is None:
                continue
            try:
                if result.outcome == "unchanged":
                    written = await self.store.get_secret(secret.name)
                else:
                    written = await self.store.put_secret(secret, create=result.outcome == "created")
            except (AlreadyExists, NotFound) as exc:
                result.fail(f"{exc}; apply again", kind="conflict")
                continue
            except StoreError as exc:
                result.fail(str(exc), kind="unavailable")
                continue
            users = [a.name for a in agents.values() if references(a, secret.name)]
            result.secret_view = written.to_public(users)

    def _admit(
        self, doc: Document, stamp: Stamp | None, stored: list[Agent], classes: frozenset[str] | None
    ) -> DocResult:
        result = DocResult(doc.index, doc.line, _document_name(doc.body), doc=doc)
        for problem in doc.problems:
            result.fail(problem.message, problem.field, problem.line)
        if not isinstance(doc.body, dict):
            result.fail("a document must be a mapping: an Agent manifest (apiVersion, kind, metadata, spec)")
            return result
        try:
            agent, _ = admit(_without_server_fields(doc.body), self.settings, others=stored, runtime_classes=classes)
        except AdmissionError as exc:
            reported = {e.field for e in result.errors}
            kind: ErrorKind = "forbidden" if exc.forbidden else "invalid"
            for error in exc.errors:
                if error.field not in reported:
                    result.fail(error.message, error.field, doc.line_of(error.field), kind)
            return result
        if result.errors:
            return result
        result.submitted = stamp(agent) if stamp is not None else agent
        return result

    def _check_against_store(self, results: list[DocResult], stored_all: dict[str, Agent], guard: Guard | None) -> None:
        """Conflicts a schema cannot see: duplicates in the set, names being deleted, container-name clashes."""
        taken = {container_name(name): name for name in stored_all}
        first: dict[str, int] = {}
        first_container: dict[str, str] = {}
        for result in results:
            agent = result.submitted
            if agent is None:
                continue
            name = agent.name
            if name in first:
                result.fail(f"agent {name!r} is also defined by document {first[name]}", kind="conflict")
                continue
            first[name] = result.index
            cname = container_name(name)
            if first_container.get(cname, name) != name:
                result.fail(
                    f"agents {first_container[cname]!r} and {name!r} would share the container name {cname!r}",
                    kind="conflict",
                )
                continue
            first_container[cname] = name
            stored = stored_all.get(name)
            if stored is None and taken.get(cname, name) != name:
                result.fail(f"agent {taken[cname]!r} already uses the container name {cname!r}", kind="conflict")
                continue
            if stored is not None and stored.metadata.deletion_timestamp is not None:
                result.fail(f"agent {name!r} is being deleted; apply it again once it is gone", kind="conflict")
                continue
            if stored is not None and guard is not None and (reason := guard(stored)) is not None:
                result.fail(reason, kind="conflict")
                continue
            if stored is not None:
                agent = _keep_system_metadata(agent, stored)
            missing = [
                k for k, v in agent.spec.env.items() if v == REDACTED and (stored is None or k not in stored.spec.env)
            ]
            for key in missing:
                path = f"spec.env.{key}" if result.doc is None or is_manifest(result.doc.body) else f"env.{key}"
                result.fail(
                    f"{REDACTED!r} stands for a stored secret, and agent {name!r} has none under this name",
                    path,
                    result.doc.line_of(path) if result.doc is not None else None,
                )
            if missing:
                continue
            if stored is not None:
                agent = keep_stored_secrets(agent, stored)
            result.submitted, result.stored = agent, stored
            result.plan = plan_apply(stored, agent, self.render)
            result.outcome = result.plan.outcome

    async def _write(self, result: DocResult) -> None:
        agent = result.submitted
        assert agent is not None and result.plan is not None
        try:
            if result.plan.outcome == "created":
                result.agent = await self.store.create(agent)
            elif result.plan.outcome == "configured":
                result.agent = await self.store.replace(agent)
            else:
                result.agent = result.stored
                return
        except (AlreadyExists, Conflict, NotFound) as exc:
            result.fail(f"{exc}; apply again", kind="conflict")
            return
        except StoreError as exc:
            result.fail(str(exc), kind="unavailable")
            return
        message = "; ".join(str(step) for step in result.plan.steps) or result.plan.outcome
        await self._event(result.agent, "Applied", f"{result.plan.outcome} by apply: {message}")

    def _prunable(
        self, stored_all: dict[str, Agent], results: list[DocResult], prune: Callable[[Agent], bool], cause: str
    ) -> list[DocResult]:
        """The stored agents that ``prune`` selects and the applied set no longer names."""
        keep = {r.name for r in results if r.name}
        return [
            DocResult(-1, None, agent.name, "pruned", plan_delete(agent, cause), stored=agent)
            for agent in stored_all.values()
            if agent.name not in keep and agent.metadata.deletion_timestamp is None and prune(agent)
        ]

    async def _delete(self, result: DocResult, cause: str) -> bool:
        """Mark one pruned agent deleted (the non-atomic path); False when it was already gone."""
        assert result.name is not None
        try:
            result.agent = await self.store.mark_deleted(result.name)
        except NotFound:
            return False
        except StoreError as exc:
            result.fail(str(exc), kind="unavailable")
        else:
            await self._event(result.agent, "Pruned", f"deleted by apply: {cause}")
        return True

    async def _event(self, agent: Agent, reason: str, message: str) -> None:
        with contextlib.suppress(StoreError):
            await self.store.record_event(agent, "Normal", reason, message)


def as_written(result: DocResult) -> Agent:
    """The record a document's write would leave: new, or the stored one with the document's spec,
    labels and annotations (generation moved when the spec changed), or marked deleted when pruned."""
    stored, submitted = result.stored, result.submitted
    if stored is None:
        assert submitted is not None
        return submitted
    record = stored.copy()
    if result.outcome == "pruned":
        record.metadata.deletion_timestamp = record.metadata.deletion_timestamp or "(pruned)"
        return record
    assert submitted is not None
    if submitted.spec != stored.spec:
        record.metadata.generation += 1
    record.spec = submitted.spec
    record.metadata.labels = dict(submitted.metadata.labels)
    record.metadata.annotations = dict(submitted.metadata.annotations)
    return record
