"""NPS survey responses from CSV: ``response_id,customer,email,score,comment,responded_at``.

``customer`` is the customer's external key; when empty (or unknown) the response is matched
by the e-mail domain. Scores are integers 0-10.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import IO

from connectors.common import parse_time, text_or_none
from connectors.matching import CustomerDirectory, match
from events.errors import InvalidInputError
from events.ingest import Match, SurveyAnswer

VENDOR = "nps"
COLUMNS = ("response_id", "customer", "email", "score", "comment", "responded_at")


def read_rows(stream: IO[str]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(stream)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InvalidInputError("header", f"missing column(s) {', '.join(missing)}; expected: {','.join(COLUMNS)}")
    reader.fieldnames = header
    line = reader.line_num
    for row in reader:
        yield line + 1, row
        line = reader.line_num


def translate(row: dict[str, str]) -> SurveyAnswer:
    if None in row:
        raise InvalidInputError("row", "has more cells than the header has columns")
    response_id = (row.get("response_id") or "").strip()
    if not response_id:
        raise InvalidInputError("response_id", "required")
    raw = (row.get("score") or "").strip()
    if not (raw.isascii() and raw.isdigit()) or not 0 <= int(raw) <= 10:  # "²".isdigit(), yet int("²") fails
        raise InvalidInputError("score", f"{raw[:10]!r} is not an integer from 0 to 10")
    return SurveyAnswer(
        response_id=response_id,
        customer_ref=text_or_none(row.get("customer"), 64),
        email=text_or_none(row.get("email"), 320),
        score=int(raw),
        comment=text_or_none(row.get("comment")),
        responded_at=parse_time((row.get("responded_at") or "").strip(), "responded_at"),
    )


def match_answer(directory: CustomerDirectory, answer: SurveyAnswer) -> Match:
    return match(directory, source_field="external_key", source_value=answer.customer_ref, email=answer.email)
