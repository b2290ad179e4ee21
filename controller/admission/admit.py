"""Turning a user's body (flat seed form or manifest) into an Agent, or into field errors.

Order of judgement: the schema first (422 for anything malformed), with what Docker and the kernel
cannot carry that JSON Schema cannot express (``docker_limits``), then the security policy
(``controller.admission.policy``: 403 naming the rule). Nothing is admitted half-way.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

from controller.admission.policy import check_spec, forbidden_fields
from controller.admission.schema import FieldError, _user_path, flat_to_manifest, is_manifest, validate_manifest
from controller.config import Settings
from controller.model.agent import Agent, AgentSpec, Metadata, SpecDefaults
from controller.model.runtime_class import GVISOR

MAX_REPORTED_ERRORS = 50
# execve(2): one environment or argument string is at most MAX_ARG_STRLEN (32 pages) with its NUL, and all
# of them together at most a quarter of the stack limit (2 MiB with the usual 8 MiB); the image's own
# environment and entrypoint share that, so an agent's env, command and args get half of it.
MAX_ARG_STRLEN = 32 * 4096
MAX_EXEC_BYTES = 1024 * 1024
LABEL_PREFIX_MAX = 253
# Integer fields a JSON or YAML number written with a fraction (512.0) reaches as a float: Docker's
# Go types refuse 512.0 for an int64, so a whole number is stored as the integer it is.
WHOLE_NUMBER_FIELDS = (
    ("resources", "pids"),
    ("resources", "memory"),
    ("stopGracePeriodSeconds",),
    ("securityContext", "runAsUser"),
    ("securityContext", "runAsGroup"),
)


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


def admit(
    body: Any,
    settings: Settings,
    *,
    name: str | None = None,
    others: Sequence[Agent] = (),
    runtime_classes: Collection[str] | None = None,
) -> tuple[Agent, str | None]:
    """Validate ``body`` and return the Agent it asks for plus the resourceVersion it carried, if any.

    ``name`` is the name from the URL (PUT/PATCH); a body naming another agent is refused.
    ``runtime_classes``: what the engine can run (``Runtime.runtime_classes``; see ``asks_for_gvisor``),
    None when not asked.
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
    errors += [e for e in docker_limits(manifest, flat=flat) if e.field not in refused_fields]
    if errors:
        raise AdmissionError(sorted([*errors, *refused], key=lambda e: e.field))
    if refused:
        raise AdmissionError(refused, forbidden=True)
    metadata = manifest["metadata"]
    if name is not None and metadata["name"] != name:
        field = "name" if flat else "metadata.name"
        raise AdmissionError([FieldError(field, f"{metadata['name']!r} does not match the name in the URL {name!r}")])
    spec_data = _whole_numbers(manifest["spec"])
    spec_data.setdefault("runtimeClassName", settings.default_runtime_class)
    spec = AgentSpec.from_dict(spec_data, spec_defaults(settings))
    neighbours = (
        [(o.name, o.spec.volumes) for o in others if o.spec.volumes and o.name != metadata["name"]]
        if spec.volumes
        else []
    )
    verdict = check_spec(spec, settings, prefix, neighbours, runtime_classes)
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


def _whole_numbers(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the integer fields that arrived as whole floats (``512.0``) as ints (``512``)."""
    out = dict(spec)
    for path in WHOLE_NUMBER_FIELDS:
        parent = out
        for part in path[:-1]:
            child = parent.get(part)
            if not isinstance(child, dict):
                break
            parent[part] = child = dict(child)
            parent = child
        else:
            value = parent.get(path[-1])
            if isinstance(value, float) and value.is_integer():
                parent[path[-1]] = int(value)
    return out


def docker_limits(manifest: Any, *, flat: bool = False) -> list[FieldError]:
    """What the schema cannot say about a schema-shaped manifest: text Docker would change (lone
    surrogates), a label key's prefix over 253 characters, env and argv beyond the kernel's limits.
    Parts of the wrong shape are skipped: the schema reports those."""
    if not isinstance(manifest, dict):
        return []
    errors = [FieldError(_user_path(path, flat), message) for path, message in _unencodable(manifest, "")]
    metadata = manifest.get("metadata")
    for kind in ("labels", "annotations"):
        keys = metadata.get(kind) if isinstance(metadata, dict) else None
        for key in keys if isinstance(keys, dict) else ():
            prefix = key.rpartition("/")[0] if isinstance(key, str) else ""
            if len(prefix) > LABEL_PREFIX_MAX:
                errors.append(
                    FieldError(
                        _user_path(f"metadata.{kind}", flat),
                        f"invalid key {key!r}: its prefix is longer than {LABEL_PREFIX_MAX} characters",
                    )
                )
    spec = manifest.get("spec")
    if isinstance(spec, dict):
        errors += [FieldError(_user_path(path, flat), message) for path, message in _exec_sizes(spec)]
    return errors


def _unencodable(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Strings (and keys) holding a lone UTF-16 surrogate: Docker would store U+FFFD instead."""
    message = "is not valid Unicode text (a lone surrogate, which Docker would replace)"
    if isinstance(value, str):
        if not _utf8(value):
            yield path or "(body)", message
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not _utf8(key):
                yield path or "(body)", "a key " + message
                continue
            yield from _unencodable(item, child)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unencodable(item, f"{path}[{i}]")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _exec_sizes(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The env entries and command line the container's process is started with, against execve's limits."""
    env = spec.get("env")
    env = env if isinstance(env, dict) else {}
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str) or not _utf8(key) or not _utf8(value):
            continue
        size = len(f"{key}={value}".encode()) + 1
        total += size
        if size > MAX_ARG_STRLEN:
            yield (
                f"spec.env.{key}",
                f"NAME=value is {size} bytes as UTF-8; the kernel refuses an environment string over "
                f"{MAX_ARG_STRLEN // 1024} KiB",
            )
    for field in ("command", "args"):
        items = spec.get(field)
        for item in items if isinstance(items, list) else ():
            if isinstance(item, str) and _utf8(item):
                total += len(item.encode()) + 1
    if total > MAX_EXEC_BYTES:
        yield (
            "spec.env",
            f"the environment, command and args together are {total} bytes as UTF-8; at most "
            f"{MAX_EXEC_BYTES // 1024} KiB are allowed (the kernel's limit for starting a process is shared "
            "with the image's own environment)",
        )


def mentions_volumes(body: Any) -> bool:
    """Whether ``body`` (flat or manifest) asks for volumes: only then do other agents' mounts matter to
    its admission, so a caller need not list every record for a body without any."""
    if not isinstance(body, dict):
        return False
    spec = body.get("spec")
    return bool(body.get("volumes")) or (isinstance(spec, dict) and bool(spec.get("volumes")))


def asks_for_gvisor(body: Any, settings: Settings) -> bool:
    """Whether ``body`` (flat, manifest or merge patch) may be admitted as a gvisor agent: only then does
    its admission need the engine's runtime classes (a call to Docker the API makes no other write wait for)."""
    if settings.default_runtime_class == GVISOR:
        return True
    if not isinstance(body, dict):
        return False
    spec = body.get("spec")
    return body.get("runtimeClassName") == GVISOR or (isinstance(spec, dict) and spec.get("runtimeClassName") == GVISOR)
