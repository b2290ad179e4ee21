"""Query parameters, parsed one way everywhere: boolean flags, integers, numbers of seconds.

Every handler and the request throttle use these, so what a handler takes for "true" is what the throttle
takes for "true" (a stream the throttle mistook for a short request would hold its slot for hours).

- A **flag** is true for ``true``, ``1``, ``yes`` and an empty value (``?watch``), false for ``false``,
  ``0``, ``no``, in any case; anything else is a 400 naming the parameter, never silently false.
- An **integer** is ASCII digits only (``str.isdigit`` and ``int`` also take superscript, Arabic-Indic
  or fullwidth digits), at most 18 of them (so it fits in 64 bits and ``int()`` never refuses it);
  anything else is a 400 naming the parameter. An empty value means the parameter is absent.
- A **number** is ASCII digits with an optional ASCII fraction (``2``, ``2.5``, ``.5``); no sign, no
  exponent, no ``inf``/``nan``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from api.server.errors import ApiError

TRUE = frozenset({"", "true", "1", "yes"})
FALSE = frozenset({"false", "0", "no"})
MAX_DIGITS = 18

_INTEGER = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_NUMBER = re.compile(r"(?:[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})")


def bad_parameter(name: str, message: str) -> ApiError:
    """400 naming the parameter: ``{"error": {"code": "BAD_REQUEST", "details": [{"field": name}]}}``."""
    return ApiError(400, "BAD_REQUEST", f"{name}: {message}", [{"field": name, "message": message}])


def parse_flag(raw: str) -> bool | None:
    """True, False, or None when ``raw`` is not a flag."""
    value = raw.lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    return None


def flag(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    """The boolean query parameter ``name``; ``default`` when absent; 400 when it is not a flag."""
    raw = query.get(name)
    if raw is None:
        return default
    value = parse_flag(raw)
    if value is None:
        raise bad_parameter(name, f"must be true or false, not {_show(raw)}")
    return value


def flag_is_set(query: Mapping[str, str], name: str) -> bool:
    """Whether ``name`` is present and true, without refusing anything (for classifying a request before
    its handler runs; the handler refuses a value that is not a flag, at once)."""
    raw = query.get(name)
    return raw is not None and parse_flag(raw) is True


def parse_integer(raw: str) -> int | None:
    """``raw`` as a non-negative integer, or None when it is not 1 to 18 ASCII digits."""
    return int(raw) if _INTEGER.fullmatch(raw) else None


def integer_value(raw: str | None, name: str, *, maximum: int | None = None) -> int | None:
    """``raw`` (from the query or a header named ``name``) as an integer; None when absent or empty."""
    if raw is None or raw == "":
        return None
    value = parse_integer(raw)
    if value is None:
        raise bad_parameter(name, f"must be a whole number (ASCII digits), not {_show(raw)}")
    if maximum is not None and value > maximum:
        raise bad_parameter(name, f"must be at most {maximum}, not {value}")
    return value


def integer(query: Mapping[str, str], name: str, *, maximum: int | None = None) -> int | None:
    """The integer query parameter ``name``; None when absent or empty; 400 naming it otherwise."""
    return integer_value(query.get(name), name, maximum=maximum)


def parse_number(raw: str) -> float | None:
    """``raw`` as a non-negative decimal number, or None when it is not one in ASCII."""
    return float(raw) if _NUMBER.fullmatch(raw) else None


def number(query: Mapping[str, str], name: str, *, suffix: str = "") -> float | None:
    """The decimal query parameter ``name`` (``suffix``, e.g. ``s``, may follow it); None when absent."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    text = raw[: -len(suffix)] if suffix and raw.endswith(suffix) else raw
    value = parse_number(text)
    if value is None:
        raise bad_parameter(name, f"must be a number (ASCII digits, optionally a fraction), not {_show(raw)}")
    return value


def _show(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")
