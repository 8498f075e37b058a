"""Adoption milestones: the definitions view (``cs_milestones_v1``) and the reached dates,
computed on read from the usage views (``cs_usage_days_v6``, ``cs_usage_users_v6``,
``cs_feature_usage_v6``), so a usage backfill moves a reached date where it belongs.

A milestone is reached on the first UTC day D on which its condition held:
- a 30-day metric: the window D-29..D (inclusive, as the health model's window at the end of
  day D) meets the threshold. Windows only grow on days with usage, so only those days are
  candidates; each customer's rows are read once, in day order, and slid over (O(rows)).
- first use of a feature: the first day with a use of it (``MIN(day)``);
- cumulative uses: the first day on which the running total of uses reaches ``min_uses``
  (a window function in SQL, on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from itertools import groupby
from typing import Any

from events.milestones import Milestone
from projections.base import Projection, utc_iso
from projections.store import Tx
from projections.health_inputs_query import OWN_EVENT_PREFIX
from projections.usage import DAYS, FEATURES, USERS

MILESTONES = "cs_milestones_v1"
WINDOW_DAYS = 30


class MilestonesProjection(Projection):
    name = "milestones_v1"
    handles = (Milestone.Event,)
    tables = (MILESTONES,)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {MILESTONES} (milestone_id TEXT PRIMARY KEY, name TEXT NOT NULL,
                rule TEXT NOT NULL, defined_at TEXT NOT NULL, defined_by TEXT NOT NULL, position BIGINT NOT NULL)""",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if not isinstance(event, Milestone.Event):
            return
        mid = str(event.originator_id)
        tx.execute(f"DELETE FROM {MILESTONES} WHERE milestone_id = ?", (mid,))
        if isinstance(event, (Milestone.Defined, Milestone.Redefined)):
            tx.execute(f"INSERT INTO {MILESTONES} (milestone_id, name, rule, defined_at, defined_by, position)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (mid, event.name, json.dumps(event.rule, sort_keys=True),
                                                     utc_iso(event.occurred_at), event.actor, position))  # fmt: skip


def definitions(tx: Tx) -> list[dict[str, Any]]:
    rows = tx.fetchall(f"SELECT * FROM {MILESTONES} ORDER BY name, milestone_id")
    return [{**r, "rule": json.loads(r["rule"])} for r in rows]


def _where(customer_id: str | None) -> tuple[str, list[Any]]:
    return (" AND customer_id = ?", [customer_id]) if customer_id else (" AND customer_id IS NOT NULL", [])


def reached_on(tx: Tx, rule: dict[str, Any], customer_id: str | None = None) -> dict[str, str]:
    """customer_id -> the first UTC day (ISO) on which ``rule`` held, for those who reached it."""
    where, params = _where(customer_id)
    if "feature" in rule and "min_uses" not in rule:
        rows = tx.fetchall(f"SELECT customer_id, MIN(day) AS day FROM {FEATURES} WHERE feature = ?{where} "
                           "GROUP BY customer_id", [rule["feature"], *params])  # fmt: skip
        return {r["customer_id"]: r["day"] for r in rows}
    if "feature" in rule:
        rows = tx.fetchall(f"SELECT customer_id, MIN(day) AS day FROM (SELECT customer_id, day, SUM(uses) OVER "
                           f"(PARTITION BY customer_id ORDER BY day) AS total FROM {FEATURES} WHERE feature = ?{where}) "
                           "cumulative WHERE total >= ? GROUP BY customer_id",
                           [rule["feature"], *params, rule["min_uses"]])  # fmt: skip
        return {r["customer_id"]: r["day"] for r in rows}
    metric, passes = rule["metric"], _threshold(rule)
    if metric in ("events_30d", "active_days_30d"):
        column = "events" if metric == "events_30d" else "1"
        sql = f"SELECT customer_id, day, {column} AS n FROM {DAYS} WHERE 1 = 1{where} ORDER BY customer_id, day"
        return {cid: day for cid, day in _first_sum(tx.fetchall(sql, params), passes)}
    table, key, own = _distinct_of(metric)
    sql = f"SELECT customer_id, day, {key} AS k FROM {table} WHERE 1 = 1{own}{where} ORDER BY customer_id, day"
    return {cid: day for cid, day in _first_distinct(tx.fetchall(sql, params), passes)}


def _distinct_of(metric: str) -> tuple[str, str, str]:
    """The view, the column and the condition a distinct-count metric reads: users, or features but
    Mixpanel's own ``$`` events (activity, not features: see ``default_key_features``)."""
    if metric == "active_users_30d":
        return USERS, "user_hash", ""
    # substr, not LIKE '$%': a literal % upsets psycopg's placeholders
    return FEATURES, "feature", f" AND substr(feature, 1, {len(OWN_EVENT_PREFIX)}) <> '{OWN_EVENT_PREFIX}'"


def _threshold(rule: dict[str, Any]) -> Any:
    value = rule["value"]
    return (lambda n: n > value) if rule["op"] == ">" else (lambda n: n >= value)


def _first_sum(rows: Iterable[dict[str, Any]], passes: Any) -> Iterator[tuple[str, str]]:
    """Per customer, the first day whose 30-day window sum passes (rows by customer, day)."""
    for cid, items in groupby(rows, key=lambda r: r["customer_id"]):
        window: deque[tuple[date, int]] = deque()
        total = 0
        for r in items:
            day = date.fromisoformat(r["day"])
            window.append((day, int(r["n"] or 0)))
            total += int(r["n"] or 0)
            while window[0][0] <= day - timedelta(days=WINDOW_DAYS):
                total -= window.popleft()[1]
            if passes(total):
                yield cid, r["day"]
                break


def _first_distinct(rows: Iterable[dict[str, Any]], passes: Any) -> Iterator[tuple[str, str]]:
    """Per customer, the first day whose 30-day window holds enough distinct keys (users or features)."""
    for cid, items in groupby(rows, key=lambda r: r["customer_id"]):
        window: deque[tuple[date, str]] = deque()
        seen: Counter[str] = Counter()
        for day_text, day_rows in groupby(items, key=lambda r: r["day"]):
            day = date.fromisoformat(day_text)
            for r in day_rows:
                window.append((day, r["k"]))
                seen[r["k"]] += 1
            while window[0][0] <= day - timedelta(days=WINDOW_DAYS):
                _, key = window.popleft()
                seen[key] -= 1
                if not seen[key]:
                    del seen[key]
            if passes(len(seen)):
                yield cid, day_text
                break


def progress(tx: Tx, rule: dict[str, Any], customer_id: str, today: date) -> dict[str, Any]:
    """Where one customer stands now: the metric over the 30 days ending ``today``, or uses so far."""
    if "feature" in rule:
        row = tx.fetchone(f"SELECT COALESCE(SUM(uses), 0) AS n FROM {FEATURES} WHERE customer_id = ? AND feature = ?",
                          (customer_id, rule["feature"]))  # fmt: skip
        return {"uses_total": int(row["n"]) if row else 0}
    start, stop = (today - timedelta(days=WINDOW_DAYS - 1)).isoformat(), today.isoformat()
    metric = rule["metric"]
    if metric in ("events_30d", "active_days_30d"):
        expr = "COALESCE(SUM(events), 0)" if metric == "events_30d" else "COUNT(*)"
        sql = f"SELECT {expr} AS n FROM {DAYS} WHERE customer_id = ? AND day >= ? AND day <= ?"
    else:
        table, key, own = _distinct_of(metric)
        sql = f"SELECT COUNT(DISTINCT {key}) AS n FROM {table} WHERE customer_id = ? AND day >= ? AND day <= ?{own}"
    row = tx.fetchone(sql, (customer_id, start, stop))
    return {metric: int(row["n"]) if row else 0, "window": f"{start}..{stop}"}
