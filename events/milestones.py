"""Adoption milestones (DESIGN §6, track_adoption_milestones): named conditions on a customer's
product usage, such as "5 active users" or "used reports", whose reached dates are computed
from the usage views (projections/milestones.py).

A milestone definition is an aggregate with a fixed id per normalised name
(``signal_id("milestone", name)``), so defining the same name twice finds the same aggregate.
Rule form (validated here; a bad rule names its field and records nothing):

- ``{"metric": "active_users_30d" | "active_days_30d" | "events_30d" | "distinct_features_30d",
  "op": ">=" | ">", "value": 5}`` — the 30-day window ending on a day (D-29..D) meets it;
- ``{"feature": "Created Report"}`` — the feature's first use;
- ``{"feature": "Created Report", "min_uses": 10}`` — the feature's cumulative uses reach 10.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from events.commands import CommandMeta
from events.domain import DomainEvent
from events.errors import InvalidInputError
from events.signals import signal_id

METRICS = ("active_users_30d", "active_days_30d", "events_30d", "distinct_features_30d")
OPS = (">=", ">")
MAX_NAME = 100
MAX_FEATURE = 200
MAX_VALUE = 10_000_000


def normalise_name(name: Any) -> str:
    """Case and spacing do not make a different milestone: ' Five  Users' == 'five users'."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("name", "required: a milestone name such as '5 active users'")
    text = " ".join(name.split())
    if len(text) > MAX_NAME:
        raise InvalidInputError("name", f"at most {MAX_NAME} characters")
    return text.lower()


def milestone_id(name: str) -> UUID:
    return signal_id("milestone", normalise_name(name))


def validate_rule(rule: Any) -> dict[str, Any]:
    """The rule in its stored form, or InvalidInputError naming the field (``rule.value``...)."""
    if not isinstance(rule, dict) or not rule:
        raise InvalidInputError("rule", 'required: {"metric": "active_users_30d", "op": ">=", "value": 5} '
                                'or {"feature": "Created Report"} (optionally with "min_uses")')  # fmt: skip
    if "metric" in rule and "feature" in rule:
        raise InvalidInputError("rule", "give either metric (a 30-day usage threshold) or feature, not both")
    if "metric" in rule:
        _only(rule, ("metric", "op", "value"))
        metric = rule["metric"]
        if metric not in METRICS:
            raise InvalidInputError("rule.metric", f"{str(metric)[:40]!r} is not one of: {', '.join(METRICS)}")
        op = rule.get("op", ">=")
        if op not in OPS:
            raise InvalidInputError("rule.op", f"{str(op)[:10]!r} is not one of: {', '.join(OPS)}")
        if "value" not in rule:
            raise InvalidInputError("rule.value", "required: the threshold, e.g. 5")
        value = _number(rule["value"], "rule.value", 0 if op == ">" else 1)
        return {"metric": metric, "op": op, "value": value}
    if "feature" in rule:
        _only(rule, ("feature", "min_uses"))
        feature = rule["feature"]
        if not isinstance(feature, str) or not feature.strip() or len(feature) > MAX_FEATURE:
            raise InvalidInputError("rule.feature", f"a product event name of 1-{MAX_FEATURE} characters, e.g. 'Created Report'")
        out: dict[str, Any] = {"feature": feature.strip()}
        if rule.get("min_uses") is not None:
            out["min_uses"] = int(_number(rule["min_uses"], "rule.min_uses", 1, integer=True))
        return out
    raise InvalidInputError("rule", "give metric (with op and value) or feature (with optional min_uses)")


def _only(rule: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(rule) - set(allowed))
    if unknown:
        raise InvalidInputError(f"rule.{str(unknown[0])[:40]}", f"unknown field; this rule form accepts: {', '.join(allowed)}")


def _number(value: Any, field: str, minimum: int, integer: bool = False) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidInputError(field, f"{str(value)[:20]!r} is not a number")
    if integer and value != int(value):
        raise InvalidInputError(field, f"{value} is not a whole number")
    if not minimum <= value <= MAX_VALUE:
        raise InvalidInputError(field, f"{value} is out of range; give {minimum} to {MAX_VALUE}")
    return int(value) if value == int(value) else float(value)


def describe(rule: dict[str, Any]) -> str:
    """A rule in words: 'active_users_30d >= 5', 'first use of Created Report'."""
    if "metric" in rule:
        return f"{rule['metric']} {rule['op']} {rule['value']}"
    if "min_uses" in rule:
        return f"{rule['feature']} used {rule['min_uses']} times in total"
    return f"first use of {rule['feature']}"


class Milestone(Aggregate):
    """One milestone definition; deleting it keeps its history, defining it again revives it."""

    class Event(DomainEvent):
        pass

    class Defined(Event, Aggregate.Created):
        name: str
        rule: dict[str, Any]

    class Redefined(Event):
        name: str
        rule: dict[str, Any]
        previous: dict[str, Any] | None  # the rule it replaces; None when it had been deleted

    class Deleted(Event):
        rule: dict[str, Any]

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        return milestone_id(name)

    @event(Defined)
    def __init__(self, *, name: str, rule: dict[str, Any], actor: str, source: str, source_id: str,
                 occurred_at: datetime) -> None:  # fmt: skip
        self.name, self.rule, self.deleted = name, rule, False

    @event(Redefined)
    def redefine(self, *, name: str, rule: dict[str, Any], previous: dict[str, Any] | None, actor: str, source: str,
                 source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.name, self.rule, self.deleted = name, rule, False

    @event(Deleted)
    def delete(self, *, rule: dict[str, Any], actor: str, source: str, source_id: str, occurred_at: datetime) -> None:
        self.deleted = True


class MilestoneCommands:
    """Commands on milestone definitions, mixed into :class:`events.application.CustomerSuccess`."""

    if TYPE_CHECKING:  # provided by the application
        repository: Any

        def exists(self, aggregate_id: UUID) -> bool: ...

        def save(self, *objs: Any, **kwargs: Any) -> Any: ...

    def define_milestone(self, name: Any, rule: Any, meta: CommandMeta) -> tuple[str, int | None]:
        """Define (or change, or revive) a milestone: ('created' | 'updated' | 'unchanged', position)."""
        normalise_name(name)
        display = " ".join(str(name).split())
        stored = validate_rule(rule)
        mid = milestone_id(display)
        kw = _kw(meta)
        if not self.exists(mid):
            return "created", self.save(Milestone(name=display, rule=stored, **kw))[-1].notification.id
        milestone: Milestone = self.repository.get(mid)
        if not milestone.deleted and milestone.rule == stored and milestone.name == display:
            return "unchanged", None
        status = "created" if milestone.deleted else "updated"
        milestone.redefine(name=display, rule=stored, previous=None if milestone.deleted else milestone.rule, **kw)
        return status, self.save(milestone)[-1].notification.id

    def delete_milestone(self, name: Any, meta: CommandMeta) -> int:
        mid = milestone_id(name)
        milestone: Milestone | None = self.repository.get(mid) if self.exists(mid) else None
        if milestone is None or milestone.deleted:
            raise InvalidInputError("name", f"no milestone named {str(name)[:MAX_NAME]!r}; action 'list' shows the defined ones")
        milestone.delete(rule=milestone.rule, **_kw(meta))
        return int(self.save(milestone)[-1].notification.id)


def _kw(meta: CommandMeta) -> dict[str, Any]:
    return {"actor": meta.actor, "source": meta.source, "source_id": meta.source_id, "occurred_at": meta.occurred_at}
