"""Times as the API and the store write them: RFC 3339 in UTC with microseconds, ``...Z``. One formatter
and one parser for the whole code base."""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return format_time(datetime.now(UTC))


def parse_time(value: str) -> datetime:
    """RFC 3339 (``Z`` or an offset); more than microseconds (a runtime's nanoseconds) is cut off."""
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(ch for ch in rest[:12] if ch.isdigit())
        value = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_runtime_time(value: str | None) -> datetime | None:
    """A time a runtime reported, or None for none (Docker's zero time ``0001-01-01T00:00:00Z``)."""
    if not value or value.startswith("0001-01-01"):
        return None
    return parse_time(value)
