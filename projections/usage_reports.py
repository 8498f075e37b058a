"""Usage reports behind the engagement tools: one customer's engagement per day, ISO week or
calendar month with its trend, feature adoption (across the book or for one customer), and the
engagement patterns that matter (drops, spikes, dormant accounts and users, declining accounts).

Each report is a few bulk queries over the usage views (projections/usage.py), grouped in SQL:
a ``CASE`` maps each day to its bucket, so the same text runs on SQLite and PostgreSQL. Only
whole UTC days before the date of ``as_of`` count, and only customers registered before
``as_of``, so an answer about a past instant is a function of the events that occurred before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from projections.base import as_utc, utc_iso
from projections.health_inputs import CONTRACTS
from projections.health_inputs_query import (
    DEFAULT_KEY_FEATURES,
    book_feature_first_days,
    book_key_features,
    contract_timeline,
    scorecard_as_of,
    usage_lag_note,
)
from projections.profile import CUSTOMERS
from projections.store import Tx
from projections.usage import DAYS, FEATURES, USERS

Granularity = Literal["day", "week", "month"]
ADOPTION_MONTHS = 12

TREND_METHOD = (
    "this period [start, end) against the previous period of the same length ending at start: "
    "delta = this - previous; relative_change = delta / previous (null when previous is 0); "
    "active users are distinct users over each whole period, not sums of daily counts"
)
SLOPE_METHOD = (
    "ordinary least squares over the distinct active users of each of the last {weeks} 7-day weeks "
    "ending at the window's end (x = week index 0..{last}, y = users); declining when the slope < 0; "
    "relative_slope = slope / mean weekly users"
)


@dataclass(frozen=True)
class Bucket:
    label: str
    start: date
    end: date  # exclusive
    partial: bool  # the calendar week/month reaches beyond the period


def buckets(start: date, end: date, granularity: Granularity) -> list[Bucket]:
    """The calendar buckets covering [start, end), clipped to it: days, ISO weeks (Monday
    first, labelled 2026-W05) or calendar months (labelled 2026-01)."""
    out: list[Bucket] = []
    day = start
    while day < end:
        if granularity == "day":
            first, after, label = day, day + timedelta(days=1), day.isoformat()
        elif granularity == "week":
            first = day - timedelta(days=day.weekday())
            after = first + timedelta(days=7)
            year, week, _ = first.isocalendar()
            label = f"{year}-W{week:02d}"
        else:
            first = day.replace(day=1)
            after = (first + timedelta(days=32)).replace(day=1)
            label = f"{first:%Y-%m}"
        stop = min(after, end)
        out.append(Bucket(label, day, stop, day != first or stop != after))
        day = stop
    return out


def range_case(starts: Sequence[date]) -> tuple[str, list[str]]:
    """``CASE`` giving the index of the range holding ``day`` (ranges start at ``starts``,
    ascending; rows before ``starts[0]`` must be filtered out by the caller)."""
    whens = " ".join(f"WHEN day < ? THEN {i}" for i in range(len(starts) - 1))
    return f"CASE {whens} ELSE {len(starts) - 1} END", [s.isoformat() for s in starts[1:]]


def _book(at: str) -> tuple[str, list[Any]]:
    """Customers registered before the instant ``at`` (their first contract row is the registration)."""
    return (f"customer_id IN (SELECT customer_id FROM {CONTRACTS} c WHERE at < ? AND position = "
            f"(SELECT MIN(position) FROM {CONTRACTS} WHERE customer_id = c.customer_id))"), [at]  # fmt: skip


def contracts_as_of(tx: Tx, at: str, customer_id: str | None = None) -> dict[str, dict[str, Any]]:
    """The contract state (seats, churned_on, ...) in force at ``at`` of each customer registered
    before it, ordered by when the events occurred (see ``contract_timeline``)."""
    where, params = (" WHERE customer_id = ?", [customer_id]) if customer_id else ("", [])
    logged: dict[str, list[dict[str, Any]]] = {}
    for row in tx.fetchall(f"SELECT * FROM {CONTRACTS}{where} ORDER BY customer_id, position", params):
        logged.setdefault(row["customer_id"], []).append(row)
    states = {cid: [r for r in contract_timeline(rows) if r["at"] < at] for cid, rows in logged.items() if rows[0]["at"] < at}
    return {cid: timeline[-1] for cid, timeline in states.items() if timeline}


def _rel(now: int, before: int) -> float | None:
    return round((now - before) / before, 3) if before else None


def _window(start: date, end: date) -> dict[str, Any]:
    return {"start": start, "end": end, "days": (end - start).days}


def customer_names(tx: Tx, at: str) -> dict[str, tuple[str, str]]:
    where, params = _book(at)
    rows = tx.fetchall(f"SELECT customer_id, external_key, name FROM {CUSTOMERS} WHERE {where}", params)
    return {r["customer_id"]: (r["external_key"], r["name"]) for r in rows}


def profile(tx: Tx, customer_id: str) -> dict[str, Any]:
    row = tx.fetchone(f"SELECT external_key, name, mixpanel_account_id FROM {CUSTOMERS} WHERE customer_id = ?",
                      (customer_id,))  # fmt: skip
    return row or {"external_key": customer_id, "name": customer_id, "mixpanel_account_id": None}


def no_usage_note(tx: Tx, customer_id: str, stop: date) -> str:
    row = profile(tx, customer_id)
    key, account = row["external_key"], row["mixpanel_account_id"]
    hint = (f"its profile has mixpanel_account_id {account!r} but no usage arrived for it" if account
            else "its profile has none, so usage can match it only by a user's e-mail domain")  # fmt: skip
    return f"no usage data for {key} before {stop.isoformat()}; is its mixpanel_account_id set? ({hint})"


# ------------------------------------------------------------------------------- engagement
def engagement(tx: Tx, customer_id: str, as_of: datetime, days: int, granularity: Granularity) -> dict[str, Any]:
    """One customer's usage over the ``days`` days before as_of's date, per bucket, with its trend."""
    as_of = as_utc(as_of)  # its date is the first day not counted
    stop = as_of.date()
    start, previous = stop - timedelta(days=days), stop - timedelta(days=2 * days)
    who = profile(tx, customer_id)
    key, name = who["external_key"], who["name"]
    seats = contracts_as_of(tx, utc_iso(as_of), customer_id).get(customer_id, {}).get("seats")
    out: dict[str, Any] = {"client_id": key, "name": name, "as_of": as_of, "granularity": granularity,
                           "period": _window(start, stop), "seats": seats, "buckets": [], "trend": None}  # fmt: skip
    span = tx.fetchone(f"SELECT MIN(day) AS first_day, MAX(day) AS last_day FROM {DAYS} "
                       "WHERE customer_id = ? AND day < ? AND events > 0", (customer_id, stop.isoformat()))  # fmt: skip
    if span is None or span["first_day"] is None:
        return out | {"note": no_usage_note(tx, customer_id, stop)}
    out |= {"first_usage_day": span["first_day"], "last_usage_day": span["last_day"]}

    parts = buckets(start, stop, granularity)
    case, case_params = range_case([previous, *(b.start for b in parts)])  # range 0 = the previous period
    where = "customer_id = ? AND day >= ? AND day < ?"
    params = [*case_params, customer_id, previous.isoformat(), stop.isoformat()]
    days_by = {int(r["r"]): r for r in tx.fetchall(
        f"SELECT r, COUNT(*) AS active_days, SUM(events) AS events, SUM(sessions) AS sessions, "
        f"SUM(active_users) AS user_days FROM (SELECT {case} AS r, events, sessions, active_users FROM {DAYS} "
        f"WHERE {where} AND events > 0) s GROUP BY r", params)}  # fmt: skip
    users_by = {int(r["r"]): int(r["n"]) for r in tx.fetchall(
        f"SELECT r, COUNT(DISTINCT user_hash) AS n FROM (SELECT {case} AS r, user_hash FROM {USERS} WHERE {where}) s "
        "GROUP BY r", params)}  # fmt: skip
    periods = {int(r["r"]): int(r["n"]) for r in tx.fetchall(
        f"SELECT r, COUNT(DISTINCT user_hash) AS n FROM (SELECT CASE WHEN day < ? THEN 0 ELSE 1 END AS r, user_hash "
        f"FROM {USERS} WHERE {where}) s GROUP BY r", [start.isoformat(), *params[len(case_params):]])}  # fmt: skip

    def sums(rows: list[dict[str, Any] | None]) -> dict[str, int]:
        return {k: sum(int(r[k] or 0) for r in rows if r) for k in ("active_days", "events", "sessions", "user_days")}

    for i, b in enumerate(parts, start=1):
        row, users = sums([days_by.get(i)]), users_by.get(i, 0)
        out["buckets"].append({"label": b.label, "start": b.start, "end": b.end, "days": (b.end - b.start).days,
                               "partial": b.partial, "active_users": users, "events": row["events"],
                               "sessions": row["sessions"], "active_days": row["active_days"],
                               "active_users_per_seat": round(users / seats, 3) if seats else None})  # fmt: skip
    now = sums([days_by.get(i) for i in range(1, len(parts) + 1)])
    before = sums([days_by.get(0)])
    active, active_before = periods.get(1, 0), periods.get(0, 0)
    out |= {
        "active_users": active, "active_users_per_seat": round(active / seats, 3) if seats else None,
        "avg_daily_active_users": round(now["user_days"] / days, 2), "events": now["events"],
        "sessions": now["sessions"], "active_days": now["active_days"],
        "trend": {
            "previous_period": _window(previous, start), "active_users": active, "active_users_previous": active_before,
            "active_users_delta": active - active_before, "active_users_relative_change": _rel(active, active_before),
            "events": now["events"], "events_previous": before["events"], "events_delta": now["events"] - before["events"],
            "events_relative_change": _rel(now["events"], before["events"]), "sessions": now["sessions"],
            "sessions_previous": before["sessions"],
            "direction": "up" if active > active_before else "down" if active < active_before else "flat",
            "method": TREND_METHOD,
        },
    }  # fmt: skip
    if now["events"] == 0:
        out["note"] = f"no usage in this period; the last usage was on {span['last_day']}"
    lag = usage_lag_note(tx, stop, "the period's last days without usage")
    if lag:
        out["note"] = f"{out['note']}; {lag}" if out.get("note") else lag
    return out


# ---------------------------------------------------------------------------- adoption
def key_features(tx: Tx, as_of: datetime) -> tuple[list[str], str, str | None]:
    """The key features in force at as_of: the scorecard's, else every feature the book used in the
    90 days before it but session events and Mixpanel's own ($) events (:func:`book_key_features`)."""
    card, card_at = scorecard_as_of(tx, as_of)
    if card.key_features:
        return sorted(set(card.key_features)), "scorecard", card_at
    return sorted(book_key_features(tx, as_of)), DEFAULT_KEY_FEATURES, card_at


def features_before(tx: Tx, day: date) -> list[str]:
    """Every feature the book used before ``day``, sorted (as the health model's adoption sees them)."""
    return sorted(feature for feature, first in book_feature_first_days(tx).items() if first < day.isoformat())


def _months(first: date, last: date) -> list[tuple[str, date]]:
    """(label, last counted day) of each month from ``first`` to ``last`` (at most ADOPTION_MONTHS)."""
    back = last.year * 12 + last.month - ADOPTION_MONTHS  # months since year 0 of the earliest month shown
    month = max(first.replace(day=1), date(back // 12, back % 12 + 1, 1))
    out = []
    while month <= last:
        after = (month + timedelta(days=32)).replace(day=1)
        out.append((f"{month:%Y-%m}", min(after - timedelta(days=1), last)))
        month = after
    return out


def feature_adoption(tx: Tx, as_of: datetime, days: int, feature: str | None, customer_id: str | None,
                     limit: int) -> dict[str, Any]:  # fmt: skip
    as_of = as_utc(as_of)  # its date is the first day not counted
    at, stop = utc_iso(as_of), as_of.date()
    start = stop - timedelta(days=days)
    keys, source, card_at = key_features(tx, as_of)
    names = customer_names(tx, at)
    where, params = _book(at)
    if customer_id is not None:
        where, params = f"{where} AND customer_id = ?", [*params, customer_id]
    rows = tx.fetchall(f"SELECT customer_id, feature, MIN(day) AS first_day, MAX(day) AS last_day, "
                       f"SUM(CASE WHEN day >= ? THEN uses ELSE 0 END) AS uses FROM {FEATURES} "
                       f"WHERE day < ? AND {where} GROUP BY customer_id, feature",
                       [start.isoformat(), stop.isoformat(), *params])  # fmt: skip
    seen = sorted({r["feature"] for r in rows} | set(keys))
    out: dict[str, Any] = {"as_of": as_of, "window": _window(start, stop), "key_features": keys,
                           "key_features_source": source, "scorecard_at": card_at}  # fmt: skip
    wanted = seen
    if feature is not None:
        match = [f for f in seen if f == feature] or [f for f in seen if f.lower() == feature.lower()]
        wanted = match[:1]
        if not wanted:
            known = features_before(tx, stop)
            out["note"] = (f"no use of feature {feature!r} recorded before {stop.isoformat()}"
                           f"{' by this customer' if customer_id else ''}; features seen: {', '.join(known[:30]) or 'none'}")  # fmt: skip
    if customer_id is not None:
        return out | _one_customer(tx, rows, customer_id, keys, set(wanted), start, stop)
    return out | _book_features(tx, rows, at, names, keys, wanted, start, stop, limit)


def _one_customer(tx: Tx, rows: list[dict[str, Any]], customer_id: str,
                  keys: list[str], wanted: set[str], start: date, stop: date) -> dict[str, Any]:  # fmt: skip
    who = profile(tx, customer_id)
    out: dict[str, Any] = {"customer": {"client_id": who["external_key"], "name": who["name"]}}
    if not rows and not tx.fetchone(f"SELECT 1 AS x FROM {DAYS} WHERE customer_id = ? AND day < ? AND events > 0 LIMIT 1",
                                    (customer_id, stop.isoformat())):  # fmt: skip
        return {"customer": out["customer"] | {"features": [], "not_adopted": []}, "note": no_usage_note(tx, customer_id, stop)}
    by = {r["feature"]: r for r in rows}
    used = {f for f, r in by.items() if int(r["uses"] or 0) > 0}
    used_keys = used & set(keys)
    entries = [{"feature": f, "key": f in keys, "first_use": r["first_day"], "last_use": r["last_day"],
                "uses_in_window": int(r["uses"] or 0), "used_in_window": f in used}
               for f, r in sorted(by.items(), key=lambda kv: (kv[1]["first_day"], kv[0])) if f in wanted]  # fmt: skip
    missing = [{"feature": f, "ever_used": f in by, "first_use": by[f]["first_day"] if f in by else None,
                "last_use": by[f]["last_day"] if f in by else None}
               for f in keys if f not in used and f in wanted]  # fmt: skip
    out["customer"] |= {
        "features_used_in_window": len(used), "key_features_used_in_window": len(used_keys),
        "key_features_total": len(keys), "breadth": round(len(used_keys) / len(keys), 3) if keys else None,
        "breadth_text": (f"{len(used_keys)} of {len(keys)} key features used from {start} to {stop} (exclusive)"
                         if keys else "no key features: the scorecard names none and no feature has been seen yet"),
        "features": entries, "not_adopted": missing,
    }  # fmt: skip
    return out


def _book_features(tx: Tx, rows: list[dict[str, Any]], at: str, names: dict[str, tuple[str, str]], keys: list[str],
                   wanted: list[str], start: date, stop: date, limit: int) -> dict[str, Any]:  # fmt: skip
    where, params = _book(at)
    active = tx.fetchone(f"SELECT COUNT(DISTINCT customer_id) AS n FROM {DAYS} WHERE day >= ? AND day < ? AND events > 0 "
                         f"AND {where}", [start.isoformat(), stop.isoformat(), *params])  # fmt: skip
    active_customers = int(active["n"]) if active else 0
    out: dict[str, Any] = {"active_customers": active_customers, "customers": len(names), "features": []}
    if not rows:
        return out | {"note": f"no feature usage recorded for any customer before {stop.isoformat()}"}
    last = stop - timedelta(days=1)
    for f in wanted:
        mine = sorted((r for r in rows if r["feature"] == f), key=lambda r: (r["first_day"], names[r["customer_id"]][0]))
        adopters = [r for r in mine if int(r["uses"] or 0) > 0]
        firsts = [date.fromisoformat(r["first_day"]) for r in mine]
        out["features"].append({
            "feature": f, "key": f in keys, "adopting_customers": len(adopters),
            "share_of_active_customers": round(len(adopters) / active_customers, 3) if active_customers else None,
            "uses_in_window": sum(int(r["uses"] or 0) for r in adopters), "customers_ever": len(mine),
            "first_use": mine[0]["first_day"] if mine else None,
            "adopters": [{"client_id": names[r["customer_id"]][0], "name": names[r["customer_id"]][1],
                          "first_use": r["first_day"], "last_use": r["last_day"], "uses_in_window": int(r["uses"])}
                         for r in adopters[:limit]],
            "adopters_truncated": max(0, len(adopters) - limit),
            "adoption_over_time": [{"month": label, "through": through, "customers": sum(1 for d in firsts if d <= through)}
                                   for label, through in (_months(min(firsts), last) if firsts else [])],
        })  # fmt: skip
    out["features"].sort(key=lambda e: (-e["adopting_customers"], -e["customers_ever"], e["feature"]))
    return out


# ----------------------------------------------------------------------------- patterns
def slope(values: Sequence[float]) -> float:
    """Ordinary least-squares slope of ``values`` against their index."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    spread = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / spread if spread else 0.0


@dataclass
class _BookUsage:
    """Per customer: totals of this (1) and the previous (0) window, the last usage day, users
    gone quiet, and distinct users per week (oldest first)."""

    live: dict[str, tuple[str, str]]  # customer id -> (external key, name), registered and not churned
    totals: dict[tuple[str, int], dict[str, Any]]
    users: dict[tuple[str, int], int]
    last_day: dict[str, str]
    gone: dict[str, int]
    weekly: dict[str, list[int]]


def _book_usage(tx: Tx, at: str, previous: date, start: date, stop: date, week_starts: list[date]) -> _BookUsage:
    book, book_params = _book(at)
    names = customer_names(tx, at)
    live = {cid: names[cid] for cid, state in contracts_as_of(tx, at).items() if state["churned_on"] is None and cid in names}
    split, span = "CASE WHEN day < ? THEN 0 ELSE 1 END", [start.isoformat(), *book_params, previous.isoformat(), stop.isoformat()]
    totals = {(r["customer_id"], int(r["r"])): r for r in tx.fetchall(
        f"SELECT customer_id, r, SUM(events) AS events, SUM(sessions) AS sessions FROM (SELECT customer_id, {split} AS r, "
        f"events, sessions FROM {DAYS} WHERE {book} AND day >= ? AND day < ? AND events > 0) s GROUP BY customer_id, r", span)}  # fmt: skip
    users = {(r["customer_id"], int(r["r"])): int(r["n"]) for r in tx.fetchall(
        f"SELECT customer_id, r, COUNT(DISTINCT user_hash) AS n FROM (SELECT customer_id, {split} AS r, user_hash "
        f"FROM {USERS} WHERE {book} AND day >= ? AND day < ?) s GROUP BY customer_id, r", span)}  # fmt: skip
    last_day = {r["customer_id"]: r["last_day"] for r in tx.fetchall(
        f"SELECT customer_id, MAX(day) AS last_day FROM {DAYS} WHERE {book} AND day < ? AND events > 0 GROUP BY customer_id",
        [*book_params, stop.isoformat()])}  # fmt: skip
    gone = {r["customer_id"]: int(r["n"]) for r in tx.fetchall(
        f"SELECT p.customer_id, COUNT(*) AS n FROM (SELECT DISTINCT customer_id, user_hash FROM {USERS} WHERE {book} "
        f"AND day >= ? AND day < ?) p LEFT JOIN (SELECT DISTINCT customer_id, user_hash FROM {USERS} WHERE day >= ? "
        "AND day < ?) c ON c.customer_id = p.customer_id AND c.user_hash = p.user_hash WHERE c.user_hash IS NULL "
        "GROUP BY p.customer_id", [*book_params, previous.isoformat(), start.isoformat(), start.isoformat(), stop.isoformat()])}  # fmt: skip
    week_case, week_params = range_case(week_starts)
    weekly: dict[str, list[int]] = {}
    for r in tx.fetchall(f"SELECT customer_id, r, COUNT(DISTINCT user_hash) AS n FROM (SELECT customer_id, {week_case} AS r, "
                         f"user_hash FROM {USERS} WHERE {book} AND day >= ? AND day < ?) s GROUP BY customer_id, r",
                         [*week_params, *book_params, week_starts[0].isoformat(), stop.isoformat()]):  # fmt: skip
        weekly.setdefault(r["customer_id"], [0] * len(week_starts))[int(r["r"])] = int(r["n"])
    return _BookUsage(live, totals, users, last_day, gone, weekly)


def _numbers(u: _BookUsage, cid: str) -> dict[str, Any]:
    now, then = u.totals.get((cid, 1)) or {}, u.totals.get((cid, 0)) or {}
    n: dict[str, Any] = {"active_users": u.users.get((cid, 1), 0), "active_users_previous": u.users.get((cid, 0), 0)}
    for metric in ("events", "sessions"):
        n[metric], n[f"{metric}_previous"] = int(now.get(metric) or 0), int(then.get(metric) or 0)
    for metric in ("active_users", "events"):
        n[f"{metric}_relative_change"] = _rel(n[metric], n[f"{metric}_previous"])
    return n


def _changes(n: dict[str, Any], threshold: float) -> tuple[list[str], list[str]]:
    """Reasons for a drop and for a spike (either may be empty)."""
    if n["events_previous"] == 0:
        return [], ["usage in this window and none in the previous one (new or returning)"]
    down: list[str] = []
    up: list[str] = []
    for metric in ("active_users", "events"):
        rel, text = n[f"{metric}_relative_change"], metric.replace("_", " ")
        if rel is not None and abs(rel) > threshold:
            (down if rel < 0 else up).append(f"{text} {rel:+.0%} ({n[f'{metric}_previous']} -> {n[metric]})")
    return down, up


def _extreme(entry: dict[str, Any], pick: Any, default: float) -> float:
    changes = [v for v in (entry["active_users_relative_change"], entry["events_relative_change"]) if v is not None]
    return float(pick(changes)) if changes else default


def _declining(series: list[int], week_starts: list[date]) -> dict[str, Any]:
    s, mean, half = slope(series), sum(series) / len(series), (len(series) - 1) / 2
    return {"weeks": [{"start": w, "end": w + timedelta(days=7), "active_users": v} for w, v in zip(week_starts, series, strict=True)],
            "slope_per_week": round(s, 3), "mean_weekly_active_users": round(mean, 2), "relative_slope": round(s / mean, 3),
            "fitted_first_week": round(mean - s * half, 2), "fitted_last_week": round(mean + s * half, 2)}  # fmt: skip


def engagement_patterns(tx: Tx, as_of: datetime, days: int, threshold: float, weeks: int) -> dict[str, Any]:
    """Every pattern of every customer registered and not churned before as_of (all entries, sorted)."""
    as_of = as_utc(as_of)  # its date is the first day not counted
    at, stop = utc_iso(as_of), as_of.date()
    start, previous = stop - timedelta(days=days), stop - timedelta(days=2 * days)
    window, before = _window(start, stop), _window(previous, start)
    week_starts = [stop - timedelta(days=7 * (weeks - i)) for i in range(weeks)]
    u = _book_usage(tx, at, previous, start, stop, week_starts)
    out: dict[str, Any] = {
        "as_of": as_of, "window": window, "previous_window": before, "threshold": threshold, "weeks": weeks,
        "customers_considered": len(u.live), "customers_with_usage_in_window": sum((c, 1) in u.totals for c in u.live),
        "drops": [], "spikes": [], "dormant_accounts": [], "dormant_users": [], "declining": [],
    }  # fmt: skip
    for cid, (key, name) in sorted(u.live.items()):
        who, n = {"client_id": key, "name": name}, _numbers(u, cid)
        if n["events"] == 0 and cid in u.last_day:
            out["dormant_accounts"].append(who | {
                "window": window, "last_usage_day": u.last_day[cid],
                "days_since_last_usage": (stop - date.fromisoformat(u.last_day[cid])).days,
                "active_users_previous": n["active_users_previous"], "events_previous": n["events_previous"]})  # fmt: skip
        elif n["events"] > 0:
            for kind, reasons in zip(("drops", "spikes"), _changes(n, threshold), strict=True):
                if reasons:
                    out[kind].append(who | n | {"window": window, "previous_window": before, "reasons": reasons})
        if u.gone.get(cid):
            out["dormant_users"].append(who | {
                "window": window, "previous_window": before, "dormant_users": u.gone[cid],
                "active_users_previous": n["active_users_previous"],
                "share_of_previous": round(u.gone[cid] / n["active_users_previous"], 3)})  # fmt: skip
        series = u.weekly.get(cid)
        if series and slope(series) < 0:
            out["declining"].append(who | _declining(series, week_starts))
    out["drops"].sort(key=lambda e: (_extreme(e, min, 0.0), e["client_id"]))
    out["spikes"].sort(key=lambda e: (-_extreme(e, max, float("-inf")), -e["events"], e["client_id"]))  # new usage last
    out["dormant_accounts"].sort(key=lambda e: (e["last_usage_day"], e["client_id"]))
    out["dormant_users"].sort(key=lambda e: (-e["dormant_users"], e["client_id"]))
    out["declining"].sort(key=lambda e: (e["relative_slope"], e["client_id"]))
    if not u.last_day:
        out["note"] = f"no usage data for any customer before {stop.isoformat()}; are their mixpanel_account_ids set?"
    else:
        out["note"] = usage_lag_note(tx, stop, "the drops, dormant accounts and users and declining weeks it makes")
    out["method"] = {
        "windows": f"this window [{start}, {stop}) against the previous one [{previous}, {start}): whole UTC days before as_of's date",
        "drops_and_spikes": f"relative change (this - previous) / previous of distinct active users or of events below "
                            f"-{threshold} (drop) or above +{threshold} (spike); an account silent in this window is "
                            "listed as dormant, not as a drop; one with no usage in the previous window is a spike with "
                            "a null relative change",
        "dormant_accounts": "no usage in this window, some usage before it",
        "dormant_users": "users active in the previous window and not in this one, counted per customer",
        "declining": SLOPE_METHOD.format(weeks=weeks, last=weeks - 1),
        "customers": "registered before as_of and not churned as of as_of",
    }  # fmt: skip
    return out
