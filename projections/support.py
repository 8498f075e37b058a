"""Support view: one row per ticket/conversation (Zendesk, Intercom) and per-customer metrics."""

from __future__ import annotations

from datetime import datetime, timedelta
from statistics import median
from typing import Any
from uuid import UUID

from events.signals import Ticket
from projections.base import Projection, utc_iso
from projections.store import Tx, ViewStore

TICKETS = "cs_tickets_v1"
HIGH_PRIORITIES = ("high", "urgent")
OPEN_STATES = ("new", "open", "pending", "hold", "snoozed")


class SupportProjection(Projection):
    name = "support_v1"
    handles = (Ticket.Event,)
    tables = (TICKETS,)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {TICKETS} (
                ticket_id TEXT PRIMARY KEY, customer_id TEXT, vendor TEXT NOT NULL, vendor_id TEXT NOT NULL,
                match TEXT NOT NULL, key_owner TEXT NOT NULL, status TEXT NOT NULL, priority TEXT,
                subject TEXT, channel TEXT, opened_at TEXT NOT NULL, solved_at TEXT, csat DOUBLE PRECISION,
                csat_raw TEXT, rated_at TEXT, updated_at TEXT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{TICKETS}_customer ON {TICKETS} (customer_id, opened_at)",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if not isinstance(event, Ticket.Event):
            return  # before any work: most of the log is usage and other signals
        tid, at = str(event.originator_id), utc_iso(event.occurred_at)
        if isinstance(event, Ticket.Opened):
            tx.insert(
                TICKETS, ("ticket_id", "customer_id", "vendor", "vendor_id", "match", "key_owner", "status", "priority",
                          "subject", "channel", "opened_at", "updated_at"),
                (tid, event.customer_id, event.vendor, event.vendor_id, event.match, event.key_owner, event.status,
                 event.priority, event.subject, event.channel, at, at),
            )  # fmt: skip
        elif isinstance(event, Ticket.Changed):
            tx.execute(f"UPDATE {TICKETS} SET status = ?, priority = ?, updated_at = ? WHERE ticket_id = ?",
                       (event.status, event.priority, at, tid))  # fmt: skip
        elif isinstance(event, Ticket.Solved):
            tx.execute(f"UPDATE {TICKETS} SET solved_at = ?, updated_at = ? WHERE ticket_id = ?", (at, at, tid))
        elif isinstance(event, Ticket.Reopened):
            tx.execute(f"UPDATE {TICKETS} SET solved_at = NULL, status = ?, updated_at = ? WHERE ticket_id = ?",
                       (event.status, at, tid))  # fmt: skip
        elif isinstance(event, Ticket.Rated):
            tx.execute(f"UPDATE {TICKETS} SET csat = ?, csat_raw = ?, rated_at = ? WHERE ticket_id = ?",
                       (event.csat, event.raw_score, at, tid))  # fmt: skip


def support_metrics(tx: Tx, customer_id: UUID, as_of: datetime, window_days: int = 90) -> dict[str, Any]:
    """Open and high-priority tickets as of ``as_of`` (from opened/solved dates), CSAT and
    resolution time over the window. ``tickets_total`` 0 means: no support data at all."""
    end = utc_iso(as_of)
    start = utc_iso(as_of - timedelta(days=window_days))
    rows = tx.fetchall(f"SELECT priority, opened_at, solved_at, csat, rated_at FROM {TICKETS} "
                       "WHERE customer_id = ? AND opened_at < ?", (str(customer_id), end))  # fmt: skip
    open_rows = [r for r in rows if not r["solved_at"] or r["solved_at"] >= end]
    recent = [r for r in rows if r["opened_at"] >= start]
    rated = [r["csat"] for r in rows if r["csat"] is not None and r["rated_at"] and start <= r["rated_at"] < end]
    hours = [
        (datetime.fromisoformat(r["solved_at"]) - datetime.fromisoformat(r["opened_at"])).total_seconds() / 3600
        for r in recent
        if r["solved_at"] and r["solved_at"] < end
    ]
    return {
        "tickets_total": len(rows),
        "open_tickets": len(open_rows),
        "open_high_priority": sum(1 for r in open_rows if r["priority"] in HIGH_PRIORITIES),
        f"opened_last_{window_days}d": len(recent),
        "csat": round(sum(rated) / len(rated), 3) if rated else None,
        "csat_responses": len(rated),
        "median_resolution_hours": round(median(hours), 1) if hours else None,
    }


class SupportView:
    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def metrics(self, customer_id: UUID, as_of: datetime, window_days: int = 90) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            return support_metrics(tx, customer_id, as_of, window_days)
