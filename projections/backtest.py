"""Backtesting the health model: did the score N days before churn separate the customers who
churned from those who stayed? Replayed with the same as-of function as live scores."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from uuid import UUID

from projections.base import counted, utc_iso
from projections.health import health_as_of
from projections.health_inputs import CONTRACTS
from projections.store import ViewStore

METHOD = (
    "Each churned customer is scored as of {n} days before its churn date; each customer still active at "
    "as_of is scored as of {n} days before as_of. AUC = P(score of a retained customer > score of a churned "
    "one), ties count half (Mann-Whitney U / (n_retained x n_churned)). Customers with no score at their "
    "instant (not registered yet, or no component with data) are left out and counted."
)

# Below this many scored churns an AUC says little: the note says how far one churn can move it.
MIN_CHURNS = 10


def auc(retained: list[float], churned: list[float]) -> float | None:
    if not retained or not churned:
        return None
    wins = sum(1.0 if r > c else 0.5 if r == c else 0.0 for r in retained for c in churned)
    return round(wins / (len(retained) * len(churned)), 4)


def backtest(store: ViewStore, as_of: datetime, days_before: int) -> dict[str, Any]:
    with store.snapshot() as tx:
        rows = tx.fetchall(f"SELECT customer_id, churned_on FROM {CONTRACTS} WHERE at < ? ORDER BY customer_id, position",
                           (utc_iso(as_of),))  # fmt: skip
    latest: dict[str, str | None] = {}
    for row in rows:
        latest[row["customer_id"]] = row["churned_on"]
    churned = {cid: on for cid, on in latest.items() if on and on <= as_of.date().isoformat()}
    retained = [cid for cid in latest if cid not in churned]

    points: list[tuple[str, bool, float | None, str]] = []  # (customer, churned, score, band)
    for cid, on in sorted(churned.items()):
        instant = datetime.combine(date.fromisoformat(on), time(), timezone.utc) - timedelta(days=days_before)
        h = health_as_of(store, instant, [UUID(cid)]).get(cid)
        points.append((cid, True, h.score if h else None, h.band if h else "unregistered"))
    scores = health_as_of(store, as_of - timedelta(days=days_before), [UUID(c) for c in retained]) if retained else {}
    for cid in retained:
        h = scores.get(cid)
        points.append((cid, False, h.score if h else None, h.band if h else "unregistered"))

    scored = [(c, s) for _, c, s, _ in points if s is not None]
    bands: dict[str, dict[str, Any]] = {}
    for _, was_churned, score, band in points:
        if score is None:
            continue
        entry = bands.setdefault(band, {"customers": 0, "churned": 0})
        entry["customers"] += 1
        entry["churned"] += int(was_churned)
    for entry in bands.values():
        entry["churn_rate"] = round(entry["churned"] / entry["customers"], 3)
    value = auc([s for c, s in scored if not c], [s for c, s in scored if c])
    result: dict[str, Any] = {
        "as_of": as_of.isoformat(), "days_before": days_before, "auc": value,
        "churned_scored": sum(1 for c, _ in scored if c), "retained_scored": sum(1 for c, _ in scored if not c),
        "left_out": [{"customer_id": c, "churned": ch, "reason": "not registered yet" if b == "unregistered"
                      else "no component had data"} for c, ch, s, b in points if s is None],
        "per_band": dict(sorted(bands.items())), "method": METHOD.format(n=days_before),
    }  # fmt: skip
    note = sample_note(result["churned_scored"]) if value is not None else (
        "AUC needs at least one scored churned and one scored retained customer")  # fmt: skip
    if note:
        result["note"] = note
    return result


def sample_note(churned: int) -> str | None:
    """What an AUC from ``churned`` scored churns is worth, when they are few. The AUC is the mean,
    over churned customers, of the share of retained ones scoring above each: one churned
    customer scoring otherwise moves it by up to 1 / churned."""
    if churned >= MIN_CHURNS:
        return None
    return (f"only {counted(churned, 'churned customer')} scored: one of them scoring otherwise could move the AUC "
            f"by up to {1 / churned:.2f}, so it is indicative only until about {MIN_CHURNS} churns are on record")
