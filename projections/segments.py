"""Segments: evaluating the rule language over one customer's row, and the view of the current
definitions (``segments_v1``). The language and its validation: ``events.segments``;
membership over the book: ``projections.segment_members``; reference: docs/segments.md.

Semantics of one comparison ``{"field": F, "op": OP, "value": V}`` on a row:

- text and choice fields compare case-insensitively;
- ``=`` / ``!=`` / ``in`` treat "no value recorded" as the value ``null``: ``arr = null`` finds
  customers without an ARR, ``tier != "growth"`` is true for a customer without a tier;
- ``<``, ``<=``, ``>``, ``>=`` are false when the customer has no value for the field (an
  unscored customer is neither ``health < 40`` nor ``health >= 40``);
- ``all`` / ``any`` / ``not`` are plain and / or / not over those answers.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from typing import Any

from events.segments import EQUALITY_OPS, FIELDS, Segment, segment_key
from projections.base import Projection, utc_iso
from projections.store import Tx, ViewStore

SEGMENTS = "cs_segments_v1"
_ORDER: dict[str, Callable[[Any, Any], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def matches(rules: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether a customer's row satisfies a validated rule."""
    if "all" in rules:
        return all(matches(r, row) for r in rules["all"])
    if "any" in rules:
        return any(matches(r, row) for r in rules["any"])
    if "not" in rules:
        return not matches(rules["not"], row)
    actual, op, value = row.get(rules["field"]), rules["op"], rules["value"]
    if op == "in":
        return any(_equal(actual, v) for v in value)
    if op == "=":
        return _equal(actual, value)
    if op == "!=":
        return not _equal(actual, value)
    if actual is None or value is None:
        return False
    return _ORDER[op](actual, value)


def unmatched_values(rules: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Notes for the text values the rules compare with (``=``, ``!=``, ``in`` on tier, industry,
    owner, domain) that no customer has, matched as the rules match them (case-insensitive): a
    segment on owner 'Dana' when the owners are 'Dana Reyes', ... would be empty without a word.
    Each note names the values the book has (up to ten; domains are not listed)."""
    notes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "field" not in node:
            for child in node.get("all", node.get("any", [])) or ([node["not"]] if "not" in node else []):
                walk(child)
            return
        name = node["field"]
        if FIELDS[name].kind != "text" or node["op"] not in EQUALITY_OPS:
            return
        have = {str(r[name]).casefold(): str(r[name]) for r in rows if r.get(name) is not None}
        for value in node["value"] if isinstance(node["value"], list) else [node["value"]]:
            if isinstance(value, str) and value.casefold() not in have:
                known = sorted(set(have.values()))
                listed = "" if name == "domain" or not known else f" ({name} values now: {', '.join(known[:10])}" + (
                    ", …)" if len(known) > 10 else ")")  # fmt: skip
                note = f"{name} {value!r}: no customer has this {name}{listed}"
                if note not in notes:
                    notes.append(note)

    walk(rules)
    return notes


def _equal(actual: Any, value: Any) -> bool:
    if actual is None or value is None:
        return actual is None and value is None
    if isinstance(actual, str) and isinstance(value, str):
        return actual.casefold() == value.casefold()
    return bool(actual == value)


class SegmentsProjection(Projection):
    """The segments defined now, one row each (a deleted segment's row is removed)."""

    name = "segments_v1"
    handles = (Segment.Event,)
    tables = (SEGMENTS,)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {SEGMENTS} (segment_id TEXT PRIMARY KEY, name TEXT NOT NULL,
                name_key TEXT NOT NULL UNIQUE, description TEXT, rules TEXT NOT NULL, defined_at TEXT NOT NULL,
                defined_by TEXT NOT NULL, updated_at TEXT NOT NULL, updated_by TEXT NOT NULL,
                last_position BIGINT NOT NULL)""",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if not isinstance(event, Segment.Event):
            return
        sid, at = str(event.originator_id), utc_iso(event.occurred_at)
        if isinstance(event, (Segment.Defined, Segment.Redefined)):
            tx.execute(
                f"INSERT INTO {SEGMENTS} (segment_id, name, name_key, description, rules, defined_at, defined_by,"
                " updated_at, updated_by, last_position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, event.name, segment_key(event.name), event.description, _json(event.rules), at,
                 event.actor, at, event.actor, position),
            )  # fmt: skip
        elif isinstance(event, Segment.Updated):
            tx.execute(f"UPDATE {SEGMENTS} SET description = ?, rules = ?, updated_at = ?, updated_by = ?,"
                       " last_position = ? WHERE segment_id = ?",
                       (event.description, _json(event.rules), at, event.actor, position, sid))  # fmt: skip
        elif isinstance(event, Segment.Deleted):
            tx.execute(f"DELETE FROM {SEGMENTS} WHERE segment_id = ?", (sid,))


def _json(rules: dict[str, Any]) -> str:
    return json.dumps(rules, sort_keys=True, separators=(",", ":"))


class SegmentsView:
    """Reads of the current definitions; ``rules`` come back as JSON objects."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def all(self) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = tx.fetchall(f"SELECT * FROM {SEGMENTS} ORDER BY name_key")
        return [_decoded(r) for r in rows]

    def get(self, name: str) -> dict[str, Any] | None:
        with self.store.snapshot() as tx:
            row = tx.fetchone(f"SELECT * FROM {SEGMENTS} WHERE name_key = ?", (segment_key(name),))
        return _decoded(row) if row else None


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "rules": json.loads(row["rules"])}
