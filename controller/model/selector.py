"""Kubernetes label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x)``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Requirement = Callable[[Mapping[str, str]], bool]
_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_./-]+$")


class SelectorError(ValueError):
    pass


def _split(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _requirement(term: str) -> Requirement:
    match = _SET_RE.match(term)
    if match:
        key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, _, value = (s.strip() for s in term.partition(op))
            if not _KEY_RE.match(key):
                break
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    else:
        if term.startswith("!") and _KEY_RE.match(term[1:].strip()):
            key = term[1:].strip()
            return lambda labels: key not in labels
        if _KEY_RE.match(term):
            return lambda labels: term in labels
    raise SelectorError(f"invalid label selector term {term!r}")


def parse_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over labels; an empty selector matches everything."""
    requirements = [_requirement(term) for term in _split(text or "")]
    return lambda labels: all(req(labels) for req in requirements)
