"""Admission of a Secret (``POST /secrets``, ``PUT /secrets/{name}``, ``kind: Secret`` in YAML): names and
keys as Kubernetes validates them, size limits, and every violation naming its field, never a value."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from controller.admission.schema import FieldError
from controller.model.agent import API_VERSION
from controller.model.secret import (
    KEY_PATTERN,
    KIND,
    MAX_BYTES,
    MAX_KEY,
    MAX_KEYS,
    MAX_NAME,
    MAX_VALUE,
    NAME_PATTERN,
    Secret,
)


def parse_secret(body: Any, *, name: str | None = None) -> tuple[Secret, list[FieldError]]:
    """A Secret from a request body or YAML document (``metadata.name``, ``data``, ``stringData``,
    ``metadata.labels``), with every violation naming its field and never quoting a value.
    ``name``: the name the URL gives (a body naming another is refused)."""
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        return Secret(name or "", {}), [FieldError("(body)", "must be a JSON object: a Secret")]
    for key in sorted(set(body) - {"apiVersion", "kind", "metadata", "data", "stringData", "type"}):
        errors.append(FieldError(key, "unknown field"))
    if body.get("apiVersion", API_VERSION) != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}"))
    if body.get("kind", KIND) != KIND:
        errors.append(FieldError("kind", f"must be {KIND}"))
    if body.get("type", "Opaque") != "Opaque":
        errors.append(FieldError("type", "only Opaque secrets are supported"))
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        errors.append(FieldError("metadata", "must be an object"))
        metadata = {}
    for key in sorted(set(metadata) - {"name", "labels", "annotations", "uid", "resourceVersion", "creationTimestamp"}):
        errors.append(FieldError(f"metadata.{key}", "unknown field"))
    given = metadata.get("name", name)
    if not isinstance(given, str) or not given:
        errors.append(FieldError("metadata.name", "required field is missing"))
        given = name or ""
    elif len(given) > MAX_NAME or not NAME_PATTERN.match(given):
        errors.append(
            FieldError(
                "metadata.name",
                f"{given[:80]!r} is not a valid secret name: lower-case letters, digits, '-' and '.', starting "
                f"and ending with a letter or digit (DNS-1123 subdomain, at most {MAX_NAME} characters)",
            )
        )
    elif name is not None and given != name:
        errors.append(FieldError("metadata.name", f"{given!r} does not match the name in the URL ({name!r})"))
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        errors.append(FieldError("metadata.labels", "must be an object of string: string"))
        labels = {}
    data: dict[str, str] = {}
    for section in ("data", "stringData"):
        values = body.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.append(FieldError(section, "must be an object of KEY: value"))
            continue
        for key, value in values.items():
            where = f"{section}.{key}"
            if not isinstance(key, str) or not key or len(key) > MAX_KEY or not KEY_PATTERN.match(key):
                errors.append(
                    FieldError(
                        f"{section}.{str(key)[:80]}",
                        f"invalid key: letters, digits, '-', '_' and '.', 1 to {MAX_KEY} characters",
                    )
                )
                continue
            if not isinstance(value, str):
                errors.append(FieldError(where, "must be a string"))
                continue
            if section == "data":
                try:
                    value = base64.b64decode(value, validate=True).decode()
                except (binascii.Error, ValueError, UnicodeDecodeError):
                    errors.append(FieldError(where, "must be base64 of UTF-8 text (the value is not shown)"))
                    continue
            if len(value) > MAX_VALUE:
                errors.append(FieldError(where, f"is longer than {MAX_VALUE} characters (an env value's limit)"))
                continue
            if "\x00" in value:
                errors.append(FieldError(where, "contains a NUL character, which no process environment can carry"))
                continue
            data[key] = value  # stringData wins over data, as in Kubernetes
    if not data and not errors:
        errors.append(FieldError("data", "a Secret needs at least one key (in data or stringData)"))
    if len(data) > MAX_KEYS:
        errors.append(FieldError("data", f"has more than {MAX_KEYS} keys"))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > MAX_BYTES:
        errors.append(FieldError("data", f"is {size} bytes; a Secret holds at most {MAX_BYTES // 1024} KiB"))
    return Secret(given, data, dict(labels)), errors
