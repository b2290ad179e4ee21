"""Docker image references: the grammar of distribution/reference, which Docker parses ``Image`` with.

Pure: no I/O. ``PATTERN`` is the grammar as one regular expression (ECMA-262 and Python read it the
same way: ASCII classes only, no ``\\w``), which ``agent.schema.json`` carries as the ``pattern`` of
``spec.image``; ``reference_problem`` says what is wrong with a reference, in words, and also checks what
a regular expression does not express well: the name's length (at most 255 characters).

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component ( "/" path-component )*
    domain     := host [ ":" port ]        host: DNS labels joined by "." (any case), or "[" IPv6 "]"
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 hex | "sha384:" 96 hex | "sha512:" 128 hex (lower-case hex, go-digest)
"""

from __future__ import annotations

import re

NAME_MAX_LENGTH = 255
TAG_MAX_LENGTH = 128
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
DOMAIN = rf"{_HOST}(?::[0-9]+)?"
NAME = rf"(?:{DOMAIN}/)?{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST = "(?:" + "|".join(f"{algo}:[a-f0-9]{{{n}}}" for algo, n in DIGEST_HEX_LENGTHS.items()) + ")"
PATTERN = rf"^{NAME}(?::{TAG})?(?:@{DIGEST})?$"

_REFERENCE = re.compile(rf"({NAME})(?::({TAG}))?(?:@({DIGEST}))?", re.ASCII)
_NAME = re.compile(NAME, re.ASCII)
_TAG = re.compile(TAG, re.ASCII)
_DIGEST_SHAPE = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):(.*)", re.ASCII | re.DOTALL)


def _split(reference: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) as written; a ``:`` after the last ``/`` starts the tag (before it: a port)."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest if "@" in reference else None
    return name, None, digest if "@" in reference else None


def reference_problem(reference: str) -> str | None:
    """None for a reference Docker accepts; otherwise what is wrong with it."""
    if not reference:
        return "an image reference cannot be empty"
    match = _REFERENCE.fullmatch(reference)
    name, tag, digest = (match.group(1), match.group(2), match.group(3)) if match else _split(reference)
    if len(name) > NAME_MAX_LENGTH:
        return f"the repository name is longer than {NAME_MAX_LENGTH} characters"
    if match is not None:
        return None
    if not _NAME.fullmatch(name):
        if name.lower() != name and _NAME.fullmatch(name.lower()):
            return f"the repository name {name!r} must be lower-case"
        return (
            f"{name!r} is not a repository name: [registry-host[:port]/]path, each path component lower-case "
            "letters and digits, separated by '.', '_', '__' or '-'"
        )
    if tag is not None and not _TAG.fullmatch(tag):
        return (
            f"the tag {tag!r} is not valid: up to {TAG_MAX_LENGTH} letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-'"
        )
    if digest is not None:
        shape = _DIGEST_SHAPE.fullmatch(digest)
        if shape is None:
            return f"the digest {digest!r} is not algorithm:hex (e.g. sha256: and 64 hex digits)"
        algo, hex_part = shape.groups()
        if algo not in DIGEST_HEX_LENGTHS:
            return f"the digest algorithm {algo!r} is not supported (sha256, sha384, sha512)"
        length = DIGEST_HEX_LENGTHS[algo]
        return f"a {algo} digest is {length} lower-case hex digits; {hex_part!r} is not"
    return "not a valid image reference (name[:tag][@digest])"
