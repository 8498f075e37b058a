"""What the health model needs as of any instant, kept as histories (never overwritten):
contract states, ticket states, scorecard versions, health and stage overrides.

Each row is stamped with the ``occurred_at`` of the event that produced it, so "as of T" is
"the latest row with at < T": appending events that occurred after T changes nothing before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from events.domain import CONTRACT_FIELDS, Customer
from events.scorecard import Scorecard
from events.signals import Ticket
from projections.base import Projection, utc_iso
from projections.store import Tx

CONTRACTS = "cs_contract_history_v1"
TICKET_STATES = "cs_ticket_history_v1"
SCORECARDS = "cs_scorecard_history_v1"
OVERRIDES = "cs_overrides_v1"


class HealthInputsProjection(Projection):
    name = "health_inputs_v1"
    handles = (Customer.Event, Ticket.Event, Scorecard.Event)
    tables = (CONTRACTS, TICKET_STATES, SCORECARDS, OVERRIDES)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {CONTRACTS} (customer_id TEXT NOT NULL, position BIGINT NOT NULL,
                at TEXT NOT NULL, registered_at TEXT NOT NULL, arr DOUBLE PRECISION, seats BIGINT, contract_start TEXT,
                renewal_date TEXT, churned_on TEXT, tier TEXT, PRIMARY KEY (customer_id, position))""",
            f"CREATE INDEX IF NOT EXISTS ix_{CONTRACTS}_at ON {CONTRACTS} (at)",
            f"""CREATE TABLE IF NOT EXISTS {TICKET_STATES} (position BIGINT PRIMARY KEY, ticket_id TEXT NOT NULL,
                customer_id TEXT, at TEXT NOT NULL, opened_at TEXT NOT NULL, status TEXT NOT NULL, priority TEXT,
                solved BOOLEAN NOT NULL, csat DOUBLE PRECISION)""",
            f"CREATE INDEX IF NOT EXISTS ix_{TICKET_STATES}_customer ON {TICKET_STATES} (customer_id, at)",
            f"CREATE TABLE IF NOT EXISTS {SCORECARDS} (position BIGINT PRIMARY KEY, at TEXT NOT NULL, config TEXT NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS {OVERRIDES} (position BIGINT PRIMARY KEY, customer_id TEXT NOT NULL,
                kind TEXT NOT NULL, at TEXT NOT NULL, value TEXT NOT NULL, score DOUBLE PRECISION, reason TEXT NOT NULL,
                author TEXT NOT NULL, expires_at TEXT NOT NULL)""",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        self.handle_batch(tx, [(event, position)])

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """Each event's history row, in log order. A change starts from the latest state of its
        customer or ticket: those written before this batch are read in one query per table,
        those written in it are remembered."""
        changes = (Customer.ContractChanged, Customer.ProfileUpdated, Customer.Churned)
        contracts = _latest(tx, CONTRACTS, "customer_id", {str(e.originator_id) for e, _ in items if isinstance(e, changes)})
        tickets = _latest(tx, TICKET_STATES, "ticket_id",
                          {str(e.originator_id) for e, _ in items if isinstance(e, Ticket.Event) and not isinstance(e, Ticket.Opened)})  # fmt: skip
        for event, position in items:
            if isinstance(event, Customer.Event):
                self._customer(tx, event, position, contracts)
            elif isinstance(event, Ticket.Event):
                self._ticket(tx, event, position, tickets)
            elif isinstance(event, Scorecard.Event):
                tx.insert(SCORECARDS, ("position", "at", "config"),
                          (position, utc_iso(event.occurred_at), json.dumps(event.config, sort_keys=True)))  # fmt: skip

    def _customer(self, tx: Tx, event: Any, position: int, latest: dict[str, dict[str, Any]]) -> None:
        cid, at = str(event.originator_id), utc_iso(event.occurred_at)
        if isinstance(event, (Customer.HealthOverridden, Customer.StageOverridden)):
            health = isinstance(event, Customer.HealthOverridden)
            tx.insert(OVERRIDES, ("position", "customer_id", "kind", "at", "value", "score", "reason", "author", "expires_at"),
                      (position, cid, "health" if health else "stage", at, event.band if health else event.stage,
                        event.score if health else None, event.reason, event.author,
                        utc_iso(datetime.fromisoformat(event.expires_at))))  # fmt: skip
            return
        if isinstance(event, Customer.Registered):
            state = {k: event.profile.get(k) for k in (*CONTRACT_FIELDS, "tier")} | {"churned_on": None, "registered_at": at}
        elif isinstance(event, (Customer.ContractChanged, Customer.ProfileUpdated, Customer.Churned)):
            last = latest.get(cid)
            assert last is not None, f"customer {cid} changed before it was registered"
            state = {k: last[k] for k in (*CONTRACT_FIELDS, "tier", "churned_on", "registered_at")}
            if isinstance(event, Customer.Churned):
                state["churned_on"] = event.churned_on
            else:
                changed = {c["field"]: c["new"] for c in event.changes if c["field"] in state}
                if not changed:
                    return
                state.update(changed)
        else:
            return
        row = {"customer_id": cid, "position": position, "at": at, **state}
        tx.insert(CONTRACTS, CONTRACT_COLUMNS, [row[c] for c in CONTRACT_COLUMNS])
        latest[cid] = row

    def _ticket(self, tx: Tx, event: Any, position: int, latest: dict[str, dict[str, Any]]) -> None:
        tid, at = str(event.originator_id), utc_iso(event.occurred_at)
        if isinstance(event, Ticket.Opened):
            state = {"customer_id": event.customer_id, "opened_at": at, "status": event.status,
                     "priority": event.priority, "solved": False, "csat": None}  # fmt: skip
        else:
            last = latest.get(tid)
            assert last is not None, f"ticket {tid} changed before it was opened"
            state = {k: last[k] for k in ("customer_id", "opened_at", "status", "priority", "solved", "csat")}
            if isinstance(event, Ticket.Changed):
                state.update(status=event.status, priority=event.priority)
            elif isinstance(event, Ticket.Solved):
                state["solved"] = True
            elif isinstance(event, Ticket.Reopened):
                state.update(status=event.status, solved=False)
            elif isinstance(event, Ticket.Rated):
                state["csat"] = event.csat
        row = {"position": position, "ticket_id": tid, "at": at, **state, "solved": bool(state["solved"])}
        tx.insert(TICKET_STATES, TICKET_COLUMNS, [row[c] for c in TICKET_COLUMNS])
        latest[tid] = row


CONTRACT_COLUMNS = ("customer_id", "position", "at", "registered_at", "arr", "seats", "contract_start", "renewal_date",
                    "churned_on", "tier")  # fmt: skip
TICKET_COLUMNS = ("position", "ticket_id", "customer_id", "at", "opened_at", "status", "priority", "solved", "csat")


def _latest(tx: Tx, table: str, key: str, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The latest row (highest position) of each of ``ids`` in ``table``, by ``key``."""
    latest: dict[str, dict[str, Any]] = {}
    for row in tx.fetchall_in(f"SELECT * FROM {table} WHERE {key}", sorted(ids), " ORDER BY position"):
        latest[row[key]] = row  # a history holds a few rows per id (all in one statement): the last one read is the latest
    return latest
