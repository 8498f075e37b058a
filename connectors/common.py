"""Small parsing helpers shared by the vendor translators (pure functions)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from events.errors import InvalidInputError


def require(payload: dict[str, Any], field: str, where: str) -> Any:
    value = payload.get(field)
    if value is None or value == "":
        raise InvalidInputError(f"{where}.{field}", "missing; the vendor payload must carry it")
    return value


def parse_time(value: Any, field: str) -> datetime:
    """ISO 8601 text (``Z`` allowed) or unix seconds (milliseconds when > 10^12), as aware UTC."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = value / 1000 if value > 1e12 else value
            return datetime.fromtimestamp(seconds, timezone.utc)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if text.isdigit():
                return parse_time(int(text), field)
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    raise InvalidInputError(field, f"not a time: {str(value)[:40]!r}; expected ISO 8601 or unix seconds")


def text_or_none(value: Any, limit: int = 2000) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:limit] or None


MALFORMED_RETRIES = 3


async def fetch_page(fetch: Any, *, vendor: str) -> Any:
    """Fetch one page, asking again when the body arrives malformed (a truncated transfer is a
    transient fault): bounded, and the cursor only moves after a page parsed in full."""
    from connectors.http import MalformedResponseError

    for attempt in range(1, MALFORMED_RETRIES + 1):
        try:
            return await fetch()
        except MalformedResponseError:
            if attempt == MALFORMED_RETRIES:
                raise
    raise AssertionError("unreachable")
