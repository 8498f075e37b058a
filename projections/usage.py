"""Usage and feature adoption: per customer-day rollups, distinct users, per-feature counts."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from uuid import UUID

from events.signals import UsageDay
from projections.base import Projection
from projections.store import Tx, ViewStore

DAYS = "cs_usage_days_v1"
USERS = "cs_usage_users_v1"
FEATURES = "cs_feature_usage_v1"


class UsageProjection(Projection):
    """Rows are keyed by the account key: the customer id, or ``unmatched:<account>``."""

    name = "usage_v1"
    tables = (DAYS, USERS, FEATURES)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {DAYS} (usage_id TEXT PRIMARY KEY, customer_id TEXT, account TEXT NOT NULL,
                day TEXT NOT NULL, events BIGINT NOT NULL, sessions BIGINT NOT NULL, active_users BIGINT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{DAYS}_customer ON {DAYS} (customer_id, day)",
            f"""CREATE TABLE IF NOT EXISTS {USERS} (customer_id TEXT NOT NULL, day TEXT NOT NULL, user_hash TEXT NOT NULL,
                PRIMARY KEY (customer_id, day, user_hash))""",
            f"""CREATE TABLE IF NOT EXISTS {FEATURES} (customer_id TEXT NOT NULL, feature TEXT NOT NULL, day TEXT NOT NULL,
                uses BIGINT NOT NULL, PRIMARY KEY (customer_id, feature, day))""",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        uid = str(event.originator_id)
        if isinstance(event, UsageDay.Opened):
            tx.execute(f"INSERT INTO {DAYS} (usage_id, customer_id, account, day, events, sessions, active_users)"
                       " VALUES (?, ?, ?, ?, 0, 0, 0)", (uid, event.customer_id, event.account, event.day))  # fmt: skip
        elif isinstance(event, UsageDay.Counted):
            row = tx.fetchone(f"SELECT customer_id, day FROM {DAYS} WHERE usage_id = ?", (uid,))
            assert row is not None, f"usage day {uid} counted before it was opened"
            tx.execute(f"UPDATE {DAYS} SET events = events + ?, sessions = sessions + ?, active_users = active_users + ?"
                       " WHERE usage_id = ?", (event.events, event.sessions, len(event.users), uid))  # fmt: skip
            if row["customer_id"] is None:
                return  # unmatched usage is counted, not broken down
            cid, day = row["customer_id"], row["day"]
            tx.executemany(f"INSERT INTO {USERS} (customer_id, day, user_hash) VALUES (?, ?, ?)",
                           [(cid, day, u) for u in event.users])  # fmt: skip
            for feature, uses in sorted(event.features.items()):
                if tx.execute(f"UPDATE {FEATURES} SET uses = uses + ? WHERE customer_id = ? AND feature = ? AND day = ?",
                              (uses, cid, feature, day)) == 0:  # fmt: skip
                    tx.execute(f"INSERT INTO {FEATURES} (customer_id, feature, day, uses) VALUES (?, ?, ?, ?)",
                               (cid, feature, day, uses))  # fmt: skip


def usage_window(tx: Tx, customer_id: UUID, end: date, days: int) -> dict[str, Any]:
    """Usage in the ``days`` days before ``end`` (exclusive): distinct users, events, sessions, features."""
    start = (end - timedelta(days=days)).isoformat()
    stop = end.isoformat()
    cid = str(customer_id)
    totals = tx.fetchone(f"SELECT COUNT(*) AS active_days, COALESCE(SUM(events), 0) AS events, "
                         f"COALESCE(SUM(sessions), 0) AS sessions FROM {DAYS} "
                         "WHERE customer_id = ? AND day >= ? AND day < ?", (cid, start, stop))  # fmt: skip
    users = tx.fetchone(f"SELECT COUNT(DISTINCT user_hash) AS n FROM {USERS} WHERE customer_id = ? AND day >= ? AND day < ?",
                        (cid, start, stop))  # fmt: skip
    features = tx.fetchall(f"SELECT feature, SUM(uses) AS uses FROM {FEATURES} WHERE customer_id = ? AND day >= ? "
                           "AND day < ? GROUP BY feature ORDER BY feature", (cid, start, stop))  # fmt: skip
    assert totals is not None and users is not None
    return {
        "from": start, "to": stop, "active_days": int(totals["active_days"]), "events": int(totals["events"]),
        "sessions": int(totals["sessions"]), "active_users": int(users["n"]),
        "features": {r["feature"]: int(r["uses"]) for r in features},
    }  # fmt: skip


def has_usage_before(tx: Tx, customer_id: UUID, end: date) -> bool:
    return tx.fetchone(f"SELECT 1 AS x FROM {DAYS} WHERE customer_id = ? AND day < ? LIMIT 1",
                       (str(customer_id), end.isoformat())) is not None  # fmt: skip


def first_use(tx: Tx, customer_id: UUID) -> dict[str, str]:
    rows = tx.fetchall(f"SELECT feature, MIN(day) AS first_day FROM {FEATURES} WHERE customer_id = ? GROUP BY feature",
                       (str(customer_id),))  # fmt: skip
    return {r["feature"]: r["first_day"] for r in rows}


class UsageView:
    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def window(self, customer_id: UUID, end: date, days: int = 30) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            return usage_window(tx, customer_id, end, days)

    def series(self, customer_id: UUID, start: date, end: date) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = tx.fetchall(f"SELECT day, events, sessions, active_users FROM {DAYS} WHERE customer_id = ? "
                               "AND day >= ? AND day < ? ORDER BY day", (str(customer_id), start.isoformat(), end.isoformat()))  # fmt: skip
        return [dict(r) for r in rows]
