"""Rule-based segments (DESIGN §6): the rule language's fields and validation, and the
``Segment`` aggregate whose events record each definition (docs/segments.md).

A rule is JSON (or the compact text form of :mod:`events.segment_text`)::

    {"all": [{"field": "arr", "op": ">=", "value": 50000},
             {"any": [{"field": "band", "op": "=", "value": "red"}, {"field": "nps", "op": "<=", "value": 6}]}]}

Validation is pure and names the offending path (``rules.all[1].field: unknown field
'revenue'; fields: …``); evaluation over a customer's row lives in ``projections.segments``.
The id of a segment is uuid5 of its normalised name, so one name is one aggregate for ever
(deleting and defining it again continues the same stream).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from events.commands import STAGES
from events.domain import DomainEvent
from events.errors import CSError, InvalidInputError
from events.segment_text import parse_text
from events.signals import signal_id

MAX_DEPTH = 6  # nesting levels of all / any / not, the top rule being level 1
MAX_NODES = 100  # rules (comparisons and combinators) in one definition
MAX_LIST = 100  # values in one `in` list, and rules in one all / any
MAX_TEXT = 200  # characters of one text value
MAX_NUMBER = 1e12
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.&/+-]{0,79}$")
MAX_DESCRIPTION = 500

ORDERING_OPS = ("<", "<=", ">", ">=")
EQUALITY_OPS = ("=", "!=", "in")
OPS = ("=", "!=", "<", "<=", ">", ">=", "in")
OP_ALIASES = {"==": "=", "<>": "!=", "eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
BANDS = ("green", "yellow", "red", "unknown")
STATUSES = ("active", "churned")


@dataclass(frozen=True)
class FieldSpec:
    kind: Literal["number", "text", "choice"]
    meaning: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def ops(self) -> tuple[str, ...]:
        return OPS if self.kind == "number" else EQUALITY_OPS


FIELDS: dict[str, FieldSpec] = {
    "arr": FieldSpec("number", "annual recurring revenue", 0, MAX_NUMBER),
    "seats": FieldSpec("number", "licensed seats", 0, MAX_NUMBER),
    "tier": FieldSpec("text", "the account's tier as recorded on its profile (e.g. growth)"),
    "industry": FieldSpec("text", "industry"),
    "owner": FieldSpec("text", "owning CSM"),
    "status": FieldSpec("choice", "active or churned", choices=STATUSES),
    "domain": FieldSpec("text", "e-mail / web domain, e.g. acme.com"),
    "days_to_renewal": FieldSpec("number", "days from today to the renewal date (negative: passed)",
                                 -MAX_NUMBER, MAX_NUMBER),  # fmt: skip
    "health": FieldSpec("number", "health score now, 0-100 (null until a component has data)", 0, 100),
    "band": FieldSpec("choice", "health band now", choices=BANDS),
    "nps": FieldSpec("number", "the latest NPS answer, 0-10 (null without one)", 0, 10),
    "stage": FieldSpec("choice", "lifecycle stage now (manage_lifecycle_stages)", choices=STAGES),
}


def field_names() -> str:
    return ", ".join(FIELDS)


class SegmentNotFoundError(CSError):
    def __init__(self, name: str, field: str = "name") -> None:
        self.name = name
        super().__init__(f"{field}: no segment named {name!r}; list the segments (segment_customers action 'list') "
                         "or define it (action 'define')")  # fmt: skip


# ----------------------------------------------------------------- validation
_SHAPES = ('{"field": "arr", "op": ">=", "value": 50000}, {"all": [...]}, {"any": [...]} or {"not": {...}}')


def validate_rules(rules: Any) -> dict[str, Any]:
    """The rule in its canonical JSON form (text form parsed, operators and choice values
    normalised), or ``InvalidInputError`` naming the path of the first problem."""
    if isinstance(rules, str) and rules.lstrip().startswith(("{", "[")):  # the JSON form sent as a string
        try:
            rules = json.loads(rules)
        except ValueError as exc:
            raise InvalidInputError("rules", f"looks like JSON but does not parse ({exc}); send the object itself "
                                    "or the text form") from None  # fmt: skip
    elif isinstance(rules, str):
        rules = parse_text(rules)
    if not isinstance(rules, dict):
        raise InvalidInputError("rules", f"expected a rule object such as {_SHAPES}, or its text form; got {_kind(rules)}")
    return _node(rules, "rules", 1, [0])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _node(node: Any, path: str, depth: int, count: list[int]) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise InvalidInputError(path, f"expected a rule object such as {_SHAPES}; got {_kind(node)}")
    count[0] += 1
    if count[0] > MAX_NODES:
        raise InvalidInputError(path, f"too many rules: at most {MAX_NODES} comparisons and combinators in one segment")
    if depth > MAX_DEPTH:
        raise InvalidInputError(path, f"nested too deeply: at most {MAX_DEPTH} levels of all / any / not")
    keys = set(node)
    for combinator in ("all", "any", "not"):
        if combinator in keys:
            if keys != {combinator}:
                other = sorted(keys - {combinator})[0]
                raise InvalidInputError(f"{path}.{other}", f"a {combinator!r} rule has no other keys; "
                                        "wrap each comparison in its own object")  # fmt: skip
            if combinator == "not":
                return {"not": _node(node["not"], f"{path}.not", depth + 1, count)}
            items = node[combinator]
            if not isinstance(items, list) or not items:
                raise InvalidInputError(f"{path}.{combinator}", f"expected a non-empty list of rules; got {_kind(items)}")
            if len(items) > MAX_LIST:
                raise InvalidInputError(f"{path}.{combinator}", f"at most {MAX_LIST} rules in one list")
            return {combinator: [_node(item, f"{path}.{combinator}[{i}]", depth + 1, count) for i, item in enumerate(items)]}
    if "field" in keys:
        return _comparison(node, path)
    found = ", ".join(sorted(keys)) or "an empty object"
    raise InvalidInputError(path, f"expected one of the keys field, all, any or not; got {found}")


def _comparison(node: dict[str, Any], path: str) -> dict[str, Any]:
    extra = sorted(set(node) - {"field", "op", "value"})
    if extra:
        raise InvalidInputError(f"{path}.{extra[0]}", "unknown key; a comparison has exactly field, op and value")
    name = node["field"]
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in FIELDS:
        shown = repr(name) if isinstance(name, str) else _kind(name)
        raise InvalidInputError(f"{path}.field", f"unknown field {shown}; fields: {field_names()}")
    spec = FIELDS[key]
    if "op" not in node:
        raise InvalidInputError(f"{path}.op", f"required; one of {', '.join(spec.ops)}")
    raw_op = node["op"]
    op = OP_ALIASES.get(raw_op.strip().lower(), raw_op.strip().lower()) if isinstance(raw_op, str) else None
    if op not in OPS:
        raise InvalidInputError(f"{path}.op", f"unknown operator {raw_op!r}; operators: {', '.join(OPS)}")
    if op not in spec.ops:
        raise InvalidInputError(f"{path}.op", f"{op!r} does not apply to the {spec.kind} field {key!r}; "
                                f"use {', '.join(spec.ops)}")  # fmt: skip
    if "value" not in node:
        example = "[..]" if op == "in" else "a value"
        raise InvalidInputError(f"{path}.value", f"required: {key} {op} {example}")
    value = node["value"]
    if op == "in":
        if not isinstance(value, list) or not value:
            raise InvalidInputError(f"{path}.value", f"'in' takes a non-empty list of values, e.g. {_example(spec, True)}; "
                                    f"got {_kind(value)}")  # fmt: skip
        if len(value) > MAX_LIST:
            raise InvalidInputError(f"{path}.value", f"at most {MAX_LIST} values in one 'in' list")
        return {"field": key, "op": op, "value": [_value(spec, key, op, v, f"{path}.value[{i}]") for i, v in enumerate(value)]}
    return {"field": key, "op": op, "value": _value(spec, key, op, value, f"{path}.value")}


def _example(spec: FieldSpec, many: bool) -> str:
    if spec.kind == "number":
        return "[10, 20]" if many else "50000"
    if spec.kind == "choice":
        return f'["{spec.choices[0]}", "{spec.choices[1]}"]' if many else f'"{spec.choices[0]}"'
    return '["retail", "finance"]' if many else '"retail"'


def _value(spec: FieldSpec, name: str, op: str, value: Any, path: str) -> Any:
    if value is None:
        if op in ("=", "!=", "in"):
            return None  # tests for "no value recorded"
        raise InvalidInputError(path, f"null cannot be ordered; use {name} = null to find customers without a {name}")
    if spec.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInputError(path, f"{name} is a number: give a number such as {_example(spec, False)}, "
                                    f"not {_kind(value)}")  # fmt: skip
        low, high = spec.minimum, spec.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidInputError(path, f"{name} must be between {low:g} and {high:g}; got {value!r} "
                                    f"({name}: {spec.meaning})")  # fmt: skip
        return value
    if not isinstance(value, str):
        raise InvalidInputError(path, f"{name} is text: give a string such as {_example(spec, False)}, not {_kind(value)}")
    text = value.strip()
    if not text or len(text) > MAX_TEXT:
        raise InvalidInputError(path, f"give 1 to {MAX_TEXT} characters (or null for 'no {name} recorded')")
    if spec.kind == "choice":
        if text.lower() not in spec.choices:
            raise InvalidInputError(path, f"{name} is one of {', '.join(spec.choices)}; got {value!r}")
        return text.lower()
    return text


def fields_used(rules: dict[str, Any]) -> set[str]:
    if "field" in rules:
        return {rules["field"]}
    if "not" in rules:
        return fields_used(rules["not"])
    return set().union(*(fields_used(r) for r in rules.get("all", rules.get("any", []))))


def segment_name(name: Any) -> str:
    """A segment's name as shown: trimmed, inner whitespace collapsed."""
    text = " ".join(name.split()) if isinstance(name, str) else ""
    if not NAME_PATTERN.match(text):
        raise InvalidInputError("name", "1 to 80 characters: letters, digits, spaces and - _ . & / +, "
                                "starting with a letter or digit (e.g. 'Enterprise at risk')")  # fmt: skip
    return text


def segment_key(name: str) -> str:
    """The normalised name that identifies a segment (case and spacing do not matter)."""
    return " ".join(name.split()).lower()


def segment_id(name: str) -> UUID:
    return signal_id("segment", segment_key(name))


def segment_description(description: Any) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str) or len(description.strip()) > MAX_DESCRIPTION:
        raise InvalidInputError("description", f"text of at most {MAX_DESCRIPTION} characters")
    return description.strip() or None


# ------------------------------------------------------------------ aggregate
class Segment(Aggregate):
    """One named segment definition; its events say who defined or changed it, and what it was."""

    class Event(DomainEvent):
        pass

    class Defined(Event, Aggregate.Created):
        name: str
        description: str | None
        rules: dict[str, Any]

    class Updated(Event):
        description: str | None
        rules: dict[str, Any]
        old_description: str | None
        old_rules: dict[str, Any]

    class Deleted(Event):
        rules: dict[str, Any]  # the definition removed, so the log alone says what it was

    class Redefined(Event):
        """A deleted segment's name defined again (same stream: the id derives from the name)."""

        name: str
        description: str | None
        rules: dict[str, Any]

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        return segment_id(name)

    @event(Defined)
    def __init__(self, *, name: str, description: str | None, rules: dict[str, Any], actor: str, source: str,
                 source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.name, self.description, self.rules = name, description, rules
        self.deleted = False

    @event(Updated)
    def update(self, *, description: str | None, rules: dict[str, Any], old_description: str | None,
               old_rules: dict[str, Any], actor: str, source: str, source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.description, self.rules = description, rules

    @event(Deleted)
    def delete(self, *, rules: dict[str, Any], actor: str, source: str, source_id: str, occurred_at: datetime) -> None:
        self.deleted = True

    @event(Redefined)
    def redefine(self, *, name: str, description: str | None, rules: dict[str, Any], actor: str, source: str,
                 source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.name, self.description, self.rules = name, description, rules
        self.deleted = False


@dataclass(frozen=True)
class SegmentResult:
    """What a segment command did. ``position`` is None when nothing was recorded."""

    name: str
    description: str | None
    rules: dict[str, Any]
    status: Literal["defined", "updated", "unchanged", "deleted"]
    position: int | None
    changes: list[str] = field(default_factory=list)
