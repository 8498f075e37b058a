"""Opaque keyset cursors for paginated lists (``limit`` + ``cursor`` -> ``next_cursor``)."""

from __future__ import annotations

import base64
import json
from typing import Any

from events.errors import InvalidInputError


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_cursor(cursor: str | None, size: int) -> list[Any] | None:
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        key = None
    if not isinstance(key, list) or len(key) != size:
        raise InvalidInputError("cursor", "not a cursor from this list; pass the next_cursor of the previous page")
    return key
