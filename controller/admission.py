"""Turning a user's body (flat seed form or manifest) into an Agent, or into field errors.

Order of judgement: the schema first (422 for anything malformed), then the security policy
(``controller.policy``: 403 naming the rule). Nothing is admitted half-way.
"""

from __future__ import annotations

from typing import Any

from controller.config import Settings
from controller.model import Agent, AgentSpec, Metadata, SpecDefaults
from controller.policy import check_spec, forbidden_fields
from controller.schema import FieldError, flat_to_manifest, is_manifest, validate_manifest

MAX_REPORTED_ERRORS = 50


class AdmissionError(Exception):
    """The body cannot be admitted; ``forbidden`` marks policy refusals (403) versus invalid input (422)."""

    def __init__(self, errors: list[FieldError], *, forbidden: bool = False) -> None:
        if len(errors) > MAX_REPORTED_ERRORS:
            more = len(errors) - MAX_REPORTED_ERRORS
            errors = [*errors[:MAX_REPORTED_ERRORS], FieldError("(body)", f"{more} more errors not shown")]
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors
        self.forbidden = forbidden


def spec_defaults(settings: Settings) -> SpecDefaults:
    return SpecDefaults(
        memory=settings.default_memory,
        cpu=settings.default_cpu,
        pids=settings.default_pids,
        network=settings.network,
    )


def admit(body: Any, settings: Settings, *, name: str | None = None) -> tuple[Agent, str | None]:
    """Validate ``body`` and return the Agent it asks for plus the resourceVersion it carried, if any.

    ``name`` is the name from the URL (PUT/PATCH); a body naming another agent is refused.
    """
    if not isinstance(body, dict):
        raise AdmissionError([FieldError("(body)", "must be a JSON object")])
    flat = not is_manifest(body)
    prefix = "" if flat else "spec."
    manifest = flat_to_manifest(body) if flat else body
    if name is not None and isinstance(manifest.get("metadata"), dict):
        manifest = {**manifest, "metadata": {"name": name, **manifest["metadata"]}}
    refused = forbidden_fields(manifest.get("spec"), prefix)
    refused_fields = {e.field for e in refused}
    errors = [e for e in validate_manifest(manifest, flat=flat) if e.field not in refused_fields]
    if errors:
        raise AdmissionError(sorted([*errors, *refused], key=lambda e: e.field))
    if refused:
        raise AdmissionError(refused, forbidden=True)
    metadata = manifest["metadata"]
    if name is not None and metadata["name"] != name:
        field = "name" if flat else "metadata.name"
        raise AdmissionError([FieldError(field, f"{metadata['name']!r} does not match the name in the URL {name!r}")])
    spec = AgentSpec.from_dict(manifest["spec"], spec_defaults(settings))
    verdict = check_spec(spec, settings, prefix)
    if verdict.invalid:
        raise AdmissionError(list(verdict.invalid))
    if verdict.forbidden:
        raise AdmissionError(list(verdict.forbidden), forbidden=True)
    agent = Agent(
        metadata=Metadata(
            name=metadata["name"],
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
        ),
        spec=spec,
    )
    rv = metadata.get("resourceVersion")
    return agent, (str(rv) if rv is not None else None)
