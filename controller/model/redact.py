"""Scrubbing an agent's env values (its secrets) out of text that came back from Docker.

Pure: no I/O. Docker and runc quote what they refused, and sometimes that is an env entry (runc:
``environment variable value can't contain null(\\x00): "API_KEY=sk-...\\x00..."``). Such text must
not reach an agent's status, its events or the controller's log. ``scrub`` replaces, for every env
value, each of these by ``<redacted>``:

- the value as it is, and as Go (``%q``), JSON and Python quote it (``\\x00``, ``\\u0000``, ``\\"``...);
- every piece of the value between control characters (NUL, newline...), in each of those spellings:
  a message may be cut at the NUL, or show the value in pieces;
- ``KEY=value`` for any value, however short: the form Docker and runc quote env entries in.

Values (and pieces) shorter than ``MIN_SCRUB_LENGTH`` characters are replaced only in the ``KEY=value``
form: replacing ``1`` or ``on`` wherever it occurs would make every message unreadable, and a value that
short is no secret worth the name. Real secrets (API keys, tokens, passwords) are far longer.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping

from controller.model.agent import REDACTED

MIN_SCRUB_LENGTH = 4

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _go_quoted(text: str) -> str:
    """``strconv.Quote(text)`` without its outer quotes (what ``%q`` prints), close enough for ASCII controls."""
    named = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in named:
            out.append(named[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def _spellings(text: str) -> set[str]:
    return {
        text,
        _go_quoted(text),
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(text)[1:-1],
    }


def secret_forms(value: str) -> set[str]:
    """Every spelling of ``value`` and of its pieces that is long enough to be replaced anywhere."""
    forms: set[str] = set()
    for part in {value, *_CONTROL.split(value)}:
        forms.update(s for s in _spellings(part) if len(part) >= MIN_SCRUB_LENGTH and s)
    return forms


def scrub(text: str, env: Mapping[str, str]) -> str:
    """``text`` with every env value of ``env`` (see the module's docstring) replaced by ``<redacted>``."""
    if not text or not env:
        return text
    compiled = _compiled(tuple(sorted(env.items())))
    if compiled is None:
        return text
    pattern, replacements = compiled
    return pattern.sub(lambda m: replacements[m.group(0)], text)


@functools.lru_cache(maxsize=64)
def _compiled(env: tuple[tuple[str, str], ...]) -> tuple[re.Pattern[str], dict[str, str]] | None:
    replacements: dict[str, str] = {}
    for key, value in env:
        if not value:
            continue
        for form in secret_forms(value):
            replacements[form] = REDACTED
        for spelling in _spellings(value):
            replacements[f"{key}={spelling}"] = f"{key}={REDACTED}"
    if not replacements:
        return None
    # Longest first, so that a value is replaced whole before any piece of it is.
    alternatives = sorted(replacements, key=len, reverse=True)
    return re.compile("|".join(re.escape(a) for a in alternatives)), replacements
