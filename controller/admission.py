"""Turning a user's body (flat seed form or manifest) into an Agent, or into field errors."""

from __future__ import annotations

import os
from typing import Any

from controller.config import Settings
from controller.model import Agent, AgentSpec, Metadata, SpecDefaults
from controller.mounts import MountError, check_host_path, parse_volume
from controller.schema import FieldError, flat_to_manifest, is_manifest, validate_manifest


class AdmissionError(Exception):
    """The body cannot be admitted; ``forbidden`` marks policy refusals (403) versus invalid input (422)."""

    def __init__(self, errors: list[FieldError], *, forbidden: bool = False) -> None:
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
    manifest = flat_to_manifest(body) if flat else body
    if name is not None and isinstance(manifest.get("metadata"), dict):
        manifest = {**manifest, "metadata": {"name": name, **manifest["metadata"]}}
    errors = validate_manifest(manifest, flat=flat)
    if errors:
        raise AdmissionError(errors)
    metadata = manifest["metadata"]
    if name is not None and metadata["name"] != name:
        field = "name" if flat else "metadata.name"
        raise AdmissionError([FieldError(field, f"{metadata['name']!r} does not match the name in the URL {name!r}")])
    spec = AgentSpec.from_dict(manifest["spec"], spec_defaults(settings))
    check_mount_policy(spec, settings, field_prefix="" if flat else "spec.")
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


def check_mount_policy(spec: AgentSpec, settings: Settings, *, field_prefix: str = "spec.") -> None:
    errors: list[FieldError] = []
    protected = (os.path.dirname(os.path.abspath(settings.store_path)),)
    for i, volume in enumerate(spec.volumes):
        try:
            check_host_path(parse_volume(volume), docker_socket=settings.docker_socket, protected=protected)
        except MountError as exc:
            errors.append(FieldError(f"{field_prefix}volumes[{i}]", str(exc)))
    if errors:
        raise AdmissionError(errors, forbidden=True)
