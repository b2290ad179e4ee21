"""Validation against ``specs/agent.schema.json``, the single source of truth for an Agent's shape.

Formats the schema names (``memory-quantity``, ``cpu-quantity``, ``bind-mount``, ``image-reference``) are
checked by the same parsers the renderer and Docker use, so the API and the containers can never disagree
about a value.

A ``pattern`` means what ECMA-262 (JSON Schema's regex dialect) says it means, not what Python's ``re``
would: ``$`` is the end of the text (Python's also matches before a final newline, which let
``"name\\n"`` through) and ``\\d``/``\\w`` are ASCII.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

from controller.admission.reference import reference_problem
from controller.egress.policy import RuleError, parse_rule
from controller.model.mounts import MountError, parse_volume
from controller.model.quantity import QuantityError, parse_cpu, parse_memory

# Shipped inside the package (so an installed wheel has it); specs/agent.schema.json links to it.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "agent.schema.json"

# Keys of the seed's flat POST body that belong in metadata; every other key is spec.
FLAT_METADATA_KEYS = ("name", "labels", "annotations", "resourceVersion")
MANIFEST_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")


NO_NUL = "^[^\\u0000]*$"  # the schema's pattern for text a process can be given (no NUL)


class ImageReferenceError(ValueError):
    """An image reference Docker would refuse."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@cache
def load_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open() as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    checker.checks("memory-quantity", raises=QuantityError)(
        lambda v: not isinstance(v, str | int) or bool(parse_memory(v))
    )
    checker.checks("cpu-quantity", raises=QuantityError)(
        lambda v: not isinstance(v, str | int | float) or bool(parse_cpu(v))
    )
    checker.checks("bind-mount", raises=MountError)(lambda v: not isinstance(v, str) or bool(parse_volume(v)))
    checker.checks("image-reference", raises=ImageReferenceError)(_image_reference)
    checker.checks("egress-entry", raises=RuleError)(lambda v: not isinstance(v, str) or bool(parse_rule(v)))
    return checker


def _image_reference(value: object) -> bool:
    if isinstance(value, str) and (problem := reference_problem(value)) is not None:
        raise ImageReferenceError(problem)
    return True


@cache
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled to mean what ECMA-262 says: ASCII classes, and a final ``$`` only at the end."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern, re.ASCII)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})  # type: ignore[no-untyped-call]


@cache
def validator() -> Draft202012Validator:
    checked: Draft202012Validator = _Validator(load_schema(), format_checker=_format_checker())
    return checked


def is_manifest(body: dict[str, Any]) -> bool:
    return any(key in body for key in MANIFEST_KEYS)


def flat_to_manifest(body: dict[str, Any]) -> dict[str, Any]:
    """The seed's ``{"name", "type", "resources", ...}`` as the Agent manifest it stands for."""
    metadata = {k: body[k] for k in FLAT_METADATA_KEYS if k in body}
    spec = {k: v for k, v in body.items() if k not in FLAT_METADATA_KEYS}
    return {"apiVersion": "parallax.ai/v1", "kind": "Agent", "metadata": metadata, "spec": spec}


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _user_path(path: str, flat: bool) -> str:
    """Report a path the way the user wrote the body."""
    if not flat:
        return path
    for prefix in ("spec.", "metadata."):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _errors_for(error: ValidationError, flat: bool) -> list[FieldError]:
    base = _path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = set(schema.get("properties", {}))
        extras = sorted(k for k in error.instance if k not in allowed)
        return [FieldError(_user_path(f"{base}.{k}" if base else k, flat), "unknown field") for k in extras]
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [k for k in error.validator_value if isinstance(error.instance, dict) and k not in error.instance]
        return [
            FieldError(_user_path(f"{base}.{k}" if base else k, flat), "required field is missing") for k in missing
        ]
    path = list(error.absolute_path)
    in_env = path[:2] == ["spec", "env"]
    message = str(error.cause) if error.cause is not None else error.message
    if "propertyNames" in error.absolute_schema_path:
        message = f"invalid key {error.instance!r}: {_key_rule(path, error, message)}"
    elif error.validator == "pattern" and error.validator_value == NO_NUL:
        message = "contains a NUL character, which Docker cannot pass to a process"
    elif in_env:
        message = _env_message(error, len(path) == 2)
    elif error.validator in ("pattern", "minLength", "maxLength") and path == ["metadata", "name"]:
        message = (
            f"{error.instance!r} is not a valid name: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label, at most 63 characters)"
        )
    return [FieldError(_user_path(base, flat) or "(body)", message)]


def _key_rule(path: list[Any], error: ValidationError, message: str) -> str:
    if error.validator not in ("pattern", "maxLength"):
        return message
    if path == ["spec", "env"]:
        return (
            "an env name is letters, digits and '_', not starting with a digit, at most 256 characters "
            "(Docker cannot carry an empty name, or one with '=' or NUL)"
        )
    if path[:1] == ["metadata"]:
        return (
            "a key is [prefix/]name: the prefix a DNS subdomain (lower-case labels of letters, digits and '-' "
            "joined by '.', at most 253 characters), the name at most 63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return message


def _env_message(error: ValidationError, whole: bool) -> str:
    """A message about an env value that never quotes it: env values are secrets."""
    if error.validator == "oneOf" and not whole:
        if isinstance(error.instance, str):
            for sub in error.context or []:
                if sub.relative_schema_path and sub.relative_schema_path[0] == 0:
                    if sub.validator == "pattern":
                        return "contains a NUL character, which Docker cannot pass to a process"
                    return _env_message(sub, False)
        return (
            'must be a string, or {"secretKeyRef": {"name": NAME, "key": KEY}}: NAME a Secret\'s name '
            "(DNS-1123 subdomain: lower-case letters, digits, '-' and '.'), KEY letters, digits, '-', '_' and '.'"
        )
    if error.validator == "type":
        return "must be an object of NAME: string" if whole else "must be a string"
    if error.validator == "maxLength":
        return f"is longer than {error.validator_value} characters"
    if error.validator == "maxProperties":
        return f"has more than {error.validator_value} variables"
    return f"is invalid ({error.validator})"


def validate_manifest(manifest: Any, *, flat: bool = False) -> list[FieldError]:
    """Every violation, each with the JSON path of the offending field, in a stable order."""
    errors: list[FieldError] = []
    for error in _errors_by_field(manifest):
        errors.extend(_errors_for(error, flat))
    unique = {(e.field, e.message): e for e in errors}
    return sorted(unique.values(), key=lambda e: (e.field, e.message))


def _errors_by_field(manifest: Any) -> Iterator[ValidationError]:
    """The validator's errors, less the generic ones (pattern, bounds) at a field whose format said why."""
    raw = list(validator().iter_errors(manifest))
    explained = {tuple(e.absolute_path) for e in raw if e.validator == "format"}
    generic = ("pattern", "minimum", "maximum", "exclusiveMinimum", "maxLength")
    for error in raw:
        if error.validator in generic and tuple(error.absolute_path) in explained:
            continue
        yield error
