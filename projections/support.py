"""Support view: one row per ticket/conversation (Zendesk, Intercom) and per-customer metrics."""

from __future__ import annotations

from collections.abc import Sequence
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
        self.handle_batch(tx, [(event, position)])

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """The rows ``handle`` leaves event by event, in a few statements. Every change sets columns
        to constants, so a ticket opened in this batch gets its changes applied before its row is
        written (one insert per table for the batch), and a ticket opened before it gets the last
        value each column was set to, in one UPDATE per set of columns. Those UPDATEs run before the
        inserts, as they would have: a change that comes before its ticket's Opened (out of order)
        finds no row, then as now."""
        opened: dict[str, dict[str, Any]] = {}  # ticket id -> its row, for tickets opened in this batch
        rows: list[dict[str, Any]] = []
        earlier: dict[str, dict[str, Any]] = {}  # ticket id -> column -> the last value set, for the others
        for event, _ in items:
            if not isinstance(event, Ticket.Event):
                continue  # most of the log is usage and other signals
            tid, at = str(event.originator_id), utc_iso(event.occurred_at)
            if isinstance(event, Ticket.Opened):
                row = dict.fromkeys(COLUMNS) | {
                    "ticket_id": tid, "customer_id": event.customer_id, "vendor": event.vendor,
                    "vendor_id": event.vendor_id, "match": event.match, "key_owner": event.key_owner,
                    "status": event.status, "priority": event.priority, "subject": event.subject,
                    "channel": event.channel, "opened_at": at, "updated_at": at,
                }  # fmt: skip
                rows.append(row)
                opened[tid] = row
                continue
            if isinstance(event, Ticket.Changed):
                change = {"status": event.status, "priority": event.priority, "updated_at": at}
            elif isinstance(event, Ticket.Solved):
                change = {"solved_at": at, "updated_at": at}
            elif isinstance(event, Ticket.Reopened):
                change = {"solved_at": None, "status": event.status, "updated_at": at}
            elif isinstance(event, Ticket.Rated):
                change = {"csat": event.csat, "csat_raw": event.raw_score, "rated_at": at}
            else:
                continue
            if tid in opened:
                opened[tid].update(change)
            else:
                earlier.setdefault(tid, {}).update(change)
        updates: dict[tuple[str, ...], list[list[Any]]] = {}
        for tid, change in earlier.items():
            columns = tuple(sorted(change))
            updates.setdefault(columns, []).append([*(change[c] for c in columns), tid])
        for columns, params in updates.items():
            tx.executemany(f"UPDATE {TICKETS} SET {', '.join(f'{c} = ?' for c in columns)} WHERE ticket_id = ?", params)
        for row in rows:
            tx.insert(TICKETS, COLUMNS, [row[c] for c in COLUMNS])


COLUMNS = ("ticket_id", "customer_id", "vendor", "vendor_id", "match", "key_owner", "status", "priority", "subject",
           "channel", "opened_at", "solved_at", "csat", "csat_raw", "rated_at", "updated_at")  # fmt: skip


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
