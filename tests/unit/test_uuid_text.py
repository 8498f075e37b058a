"""projections.base.uuid_text: a UUID's canonical text, as ``str`` writes it (the audit chain hashes it)."""

from __future__ import annotations

from uuid import UUID, uuid4, uuid5

from projections.base import uuid_text


def test_uuid_text_is_str_of_the_uuid_and_anything_else_is_str() -> None:
    values = [UUID(int=0), UUID(int=2**128 - 1), UUID(int=0xABCDEF), uuid5(UUID(int=7), "x"),
              *(uuid4() for _ in range(200))]  # fmt: skip
    for value in values:
        assert uuid_text(value) == str(value)
    assert uuid_text("unmatched:acme") == "unmatched:acme"
    assert uuid_text(12) == "12"
