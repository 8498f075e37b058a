"""Gathering the health model's inputs for many customers as of one instant, in a few bulk
queries (one per signal), so scoring the whole book costs about as much as scoring one.

Every query reads only rows stamped before the instant ``as_of`` (usage by whole UTC days
before its date), so the inputs are a function of the events that occurred before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

from events.scorecard import ScorecardConfig
from projections.base import utc_iso
from projections.feedback import EMAILS, SURVEYS
from projections.health_inputs import CONTRACTS, OVERRIDES, SCORECARDS, TICKET_STATES
from projections.store import Tx
from projections.usage import DAYS, FEATURES, USERS

SESSION_LIKE = frozenset({"$session_start", "session_start", "Session Start", "$ae_session", "App Open"})


@dataclass
class Inputs:
    """Everything known about one customer before ``as_of``."""

    customer_id: str
    contract: dict[str, Any]
    arr_180d_max: float | None = None
    renewal_extended: bool = False
    first_usage_day: str | None = None
    active_users_30d: int = 0
    active_users_prev_30d: int = 0
    active_days_30d: int = 0
    events_30d: int = 0
    features_30d: set[str] = field(default_factory=set)
    tickets: list[dict[str, Any]] = field(default_factory=list)  # latest state of each ticket
    csat_90d: list[float] = field(default_factory=list)
    surveys: list[tuple[str, int]] = field(default_factory=list)  # (responded_at, score), oldest first
    email_kinds: dict[str, tuple[int, str]] = field(default_factory=dict)  # kind -> (count, last at)
    override: dict[str, Any] | None = None


@dataclass
class BookInputs:
    as_of: datetime
    scorecard: ScorecardConfig
    scorecard_at: str | None
    book_features: set[str]
    support_connected: bool
    customers: dict[str, Inputs]


def _in(ids: list[str] | None, column: str = "customer_id") -> tuple[str, list[Any]]:
    if ids is None:
        return f" AND {column} IS NOT NULL", []
    return f" AND {column} IN ({', '.join('?' * len(ids))})", list(ids)


def scorecard_as_of(tx: Tx, as_of: datetime) -> tuple[ScorecardConfig, str | None]:
    row = tx.fetchone(f"SELECT at, config FROM {SCORECARDS} WHERE at < ? ORDER BY position DESC LIMIT 1", (utc_iso(as_of),))
    if row is None:
        return ScorecardConfig(), None
    return ScorecardConfig.model_validate(json.loads(row["config"])), row["at"]


def gather(tx: Tx, as_of: datetime, customer_ids: list[UUID] | None = None, *,
           feature_first_days: dict[str, str] | None = None) -> BookInputs:  # fmt: skip
    """The inputs of the given customers (all registered before ``as_of`` by default).

    ``feature_first_days`` (feature -> first day it was used in the book, from
    :func:`book_feature_first_days`) saves the book-wide feature scan when one caller gathers
    many instants (a stage history samples every day)."""
    t = utc_iso(as_of)
    day = as_of.date()
    ids = [str(c) for c in customer_ids] if customer_ids is not None else None
    where, params = _in(ids)
    scorecard, scorecard_at = scorecard_as_of(tx, as_of)

    customers: dict[str, Inputs] = {}
    logged: dict[str, list[dict[str, Any]]] = {}
    for row in tx.fetchall(f"SELECT * FROM {CONTRACTS} WHERE 1 = 1{where} ORDER BY customer_id, position", params):
        logged.setdefault(row["customer_id"], []).append(row)
    window_start = utc_iso(as_of - timedelta(days=180))
    for cid, log_rows in logged.items():
        if log_rows[0]["at"] >= t:
            continue  # registered at or after as_of
        rows = [r for r in contract_timeline(log_rows) if r["at"] < t]
        inputs = Inputs(cid, rows[-1])
        recent = [r["arr"] for r in rows if r["at"] >= window_start and r["arr"] is not None]
        before = [r for r in rows if r["at"] < window_start]
        if before and before[-1]["arr"] is not None:
            recent.append(before[-1]["arr"])  # the ARR in force when the window opened
        inputs.arr_180d_max = max(recent) if recent else None
        # A renewal signal: the renewal date in force now is later than the one in force when
        # the 180-day window opened (or, for a newer customer, than the first one it had).
        start_renewal = (before[-1] if before else rows[0])["renewal_date"]
        now_renewal = rows[-1]["renewal_date"]
        inputs.renewal_extended = bool(start_renewal and now_renewal and now_renewal > start_renewal)
        customers[cid] = inputs
    if not customers:
        return BookInputs(as_of, scorecard, scorecard_at, set(), False, customers)
    # The whole book: no list of ids (a book of tens of thousands would overflow a statement's
    # parameters); rows of customers registered after as_of are skipped below.
    where, params = _in(list(customers) if ids is not None else None)

    def of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["customer_id"] in customers]

    d30, d60, stop = (day - timedelta(days=30)).isoformat(), (day - timedelta(days=60)).isoformat(), day.isoformat()
    # One statement per table for both windows (for one customer, round trips are the cost).
    for row in of(tx.fetchall(f"SELECT customer_id, MIN(day) AS first_day, SUM(CASE WHEN day >= ? THEN 1 ELSE 0 END) "
                              f"AS active_days, SUM(CASE WHEN day >= ? THEN events ELSE 0 END) AS events FROM {DAYS} "
                              f"WHERE day < ?{where} GROUP BY customer_id", [d30, d30, stop, *params])):  # fmt: skip
        inputs = customers[row["customer_id"]]
        inputs.first_usage_day = row["first_day"]
        inputs.active_days_30d, inputs.events_30d = int(row["active_days"] or 0), int(row["events"] or 0)
    for row in of(tx.fetchall(f"SELECT customer_id, COUNT(DISTINCT CASE WHEN day >= ? THEN user_hash END) AS n30, "
                              f"COUNT(DISTINCT CASE WHEN day < ? THEN user_hash END) AS prev FROM {USERS} "
                              f"WHERE day >= ? AND day < ?{where} GROUP BY customer_id", [d30, d30, d60, stop, *params])):  # fmt: skip
        inputs = customers[row["customer_id"]]
        inputs.active_users_30d, inputs.active_users_prev_30d = int(row["n30"]), int(row["prev"])
    for row in of(tx.fetchall(f"SELECT DISTINCT customer_id, feature FROM {FEATURES} WHERE day >= ? AND day < ?{where}",
                              [d30, stop, *params])):  # fmt: skip
        customers[row["customer_id"]].features_30d.add(row["feature"])
    if feature_first_days is None:
        book_features = features_used_before(tx, stop)
    else:
        book_features = {feature for feature, first in feature_first_days.items() if first < stop}

    support_connected = tx.fetchone(f"SELECT 1 AS x FROM {TICKET_STATES} WHERE at < ? LIMIT 1", [t]) is not None
    csat_from = utc_iso(as_of - timedelta(days=90))
    latest: dict[str, dict[str, Any]] = {}
    for row in of(tx.fetchall(f"SELECT * FROM {TICKET_STATES} WHERE at < ?{where} ORDER BY position", [t, *params])):
        previous = latest.get(row["ticket_id"])
        if row["csat"] is not None and row["at"] >= csat_from and (previous is None or previous["csat"] != row["csat"]):
            customers[row["customer_id"]].csat_90d.append(float(row["csat"]))
        latest[row["ticket_id"]] = row
    for row in latest.values():
        customers[row["customer_id"]].tickets.append(row)

    for row in of(tx.fetchall(f"SELECT customer_id, score, responded_at FROM {SURVEYS} WHERE responded_at < ?{where} "
                              "ORDER BY responded_at, survey_id", [t, *params])):  # fmt: skip
        customers[row["customer_id"]].surveys.append((row["responded_at"], int(row["score"])))
    for row in of(tx.fetchall(f"SELECT customer_id, kind, COUNT(*) AS n, MAX(occurred_at) AS last_at FROM {EMAILS} "
                              f"WHERE occurred_at < ?{where} GROUP BY customer_id, kind", [t, *params])):  # fmt: skip
        customers[row["customer_id"]].email_kinds[row["kind"]] = (int(row["n"]), row["last_at"])
    for row in of(tx.fetchall(f"SELECT * FROM {OVERRIDES} WHERE kind = 'health' AND at < ?{where} ORDER BY position",
                              [t, *params])):  # fmt: skip
        customers[row["customer_id"]].override = row if row["expires_at"] > t else None
    return BookInputs(as_of, scorecard, scorecard_at, book_features - SESSION_LIKE, support_connected, customers)


STATE_COLUMNS = ("registered_at", "arr", "seats", "contract_start", "renewal_date", "churned_on", "tier")


def contract_timeline(log_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One customer's contract states in the order their events *occurred*.

    Each stored row is the state after its event in log order, so an event recorded after
    others but dated before them (a churn imported with its date, after a contract change)
    would carry the later change into the past. Its own change is what differs from the row
    before it in the log; those changes are re-applied here ordered by (occurred_at, position),
    so the state as of T depends only on the events that occurred before T."""
    changes, previous = [], None
    for row in log_rows:
        changes.append((row["at"], row["position"], {k: row[k] for k in STATE_COLUMNS
                                                      if previous is None or row[k] != previous[k]}))  # fmt: skip
        previous = row
    state: dict[str, Any] = {"customer_id": log_rows[0]["customer_id"], **dict.fromkeys(STATE_COLUMNS)}
    timeline = []
    for at, position, change in sorted(changes, key=lambda c: (c[0], c[1])):
        state = {**state, **change, "at": at, "position": position}
        timeline.append(state)
    return timeline


def features_used_before(tx: Tx, stop: str) -> set[str]:
    """Every feature the book used on a day before ``stop``, by a loose index scan over
    (feature, day): two index seeks per distinct feature instead of reading every row."""
    rows = tx.fetchall(
        f"WITH RECURSIVE f(feature) AS (SELECT MIN(feature) FROM {FEATURES} UNION ALL "
        f"SELECT (SELECT MIN(n.feature) FROM {FEATURES} n WHERE n.feature > f.feature) FROM f WHERE f.feature IS NOT NULL) "
        f"SELECT feature FROM f WHERE feature IS NOT NULL "
        f"AND (SELECT MIN(d.day) FROM {FEATURES} d WHERE d.feature = f.feature) < ?", [stop])  # fmt: skip
    return {r["feature"] for r in rows}


def book_feature_first_days(tx: Tx) -> dict[str, str]:
    """Every feature seen in the book with the first day it was used (for ``gather``)."""
    return {r["feature"]: r["first"] for r in tx.fetchall(f"SELECT feature, MIN(day) AS first FROM {FEATURES} GROUP BY feature")}


def days_between(later: date, earlier_iso: str) -> int:
    return (later - date.fromisoformat(earlier_iso[:10])).days
