"""Points in time as recipes and commands write them: `30m`, `12h`, `7d`, `2w` back from now, or an ISO date.

A value parser, so it lives with the schema that validates `since:`/`until:` keys; the request log and the
monitor use it to read the same strings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `12h`, `7d`, `2w` back from now, or an ISO date/time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    found = _DURATION.match(text)
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: float(found.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 12h, 7d, 2w) nor an ISO date/time (2026-12-01, 2026-12-01T08:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
