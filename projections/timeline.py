"""Timeline view: every event of a customer, with who, where from, when, and a summary.

Rows are derived from the event log only; personal fields in ``details`` stay as
encrypted tokens and are decrypted when read (so erasure reaches the timeline too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from events.domain import Customer, event_type
from events.envelope import fast_event_id
from events.signals import MACHINE_OPEN, EmailEvent, SurveyResponse, Ticket
from events.personal import ERASED, TOKEN_PREFIX, PersonalDataCodec
from projections.base import Projection, utc_iso
from projections.cursor import decode_cursor, encode_cursor
from projections.store import Tx, ViewStore

TIMELINE = "cs_timeline_v1"
SUBJECTS = "cs_timeline_subjects_v1"  # ticket id -> customer id, for ticket events after Opened


def _fmt(value: Any) -> str:
    return "none" if value is None else str(value)


def _ticket_ref(ticket: Any) -> str:
    return f"{ticket.vendor} #{ticket.vendor_id}"


def summarise(event: Any, ticket_ref: str = "") -> str:
    """One line a CSM can read. Never includes personal data or customer-supplied text."""
    if isinstance(event, Ticket.Opened):
        return f"Ticket opened on {_ticket_ref(event)} (status {event.status}, priority {_fmt(event.priority)})"
    if isinstance(event, Ticket.Changed):
        return f"Ticket {ticket_ref}: status {event.status}, priority {_fmt(event.priority)}"
    if isinstance(event, Ticket.Solved):
        return f"Ticket {ticket_ref} solved"
    if isinstance(event, Ticket.Reopened):
        return f"Ticket {ticket_ref} reopened ({event.status})"
    if isinstance(event, Ticket.Rated):
        return f"Ticket {ticket_ref} rated {event.raw_score} (CSAT {event.csat:.2f})"
    if isinstance(event, SurveyResponse.Recorded):
        kind = "promoter" if event.score >= 9 else ("passive" if event.score >= 7 else "detractor")
        return f"NPS response {event.score} ({kind})"
    if isinstance(event, EmailEvent.Recorded):
        if event.kind == MACHINE_OPEN:
            return "E-mail opened by Apple Mail Privacy Protection (a machine open, not counted as engagement)"
        return f"E-mail {event.kind}" + (f": {event.reason}" if event.reason and event.kind in ("bounce", "dropped") else "")
    if isinstance(event, Customer.Registered):
        p = event.profile
        bits = [f"{k} {p[k]}" for k in ("tier", "arr", "seats", "renewal_date") if p.get(k) is not None]
        return f"Registered {p.get('name')}" + (f" ({', '.join(bits)})" if bits else "")
    if isinstance(event, (Customer.ProfileUpdated, Customer.ContractChanged)):
        kind = "Contract changed" if isinstance(event, Customer.ContractChanged) else "Profile updated"
        return f"{kind}: " + "; ".join(f"{c['field']} {_fmt(c['old'])} -> {_fmt(c['new'])}" for c in event.changes)
    if isinstance(event, Customer.ContactAdded):
        return "Primary contact added" if event.primary else "Contact added"
    if isinstance(event, Customer.ContactRemoved):
        return "Contact removed"
    if isinstance(event, Customer.Churned):
        return f"Churned on {event.churned_on}" + (f": {event.reason}" if event.reason else "")
    return event_type(event)


def details(event: Any) -> dict[str, Any]:
    if isinstance(event, Customer.Registered):
        return {"external_key": event.external_key, "profile": event.profile}
    if isinstance(event, (Customer.ProfileUpdated, Customer.ContractChanged)):
        return {"changes": event.changes}
    if isinstance(event, Customer.ContactAdded):
        return {"contact_id": event.contact_id, "name": event.name, "email": event.email, "role": event.role, "primary": event.primary}
    if isinstance(event, Customer.ContactRemoved):
        return {"contact_id": event.contact_id}
    if isinstance(event, Customer.Churned):
        return {"churned_on": event.churned_on, "reason": event.reason}
    if isinstance(event, Ticket.Opened):
        return {"ticket_id": str(event.originator_id), "vendor": event.vendor, "vendor_id": event.vendor_id,
                "status": event.status, "priority": event.priority, "channel": event.channel,
                "customer_supplied": {"subject": event.subject, "requester": event.requester}}  # fmt: skip
    if isinstance(event, (Ticket.Changed, Ticket.Reopened)):
        return {"ticket_id": str(event.originator_id), "status": event.status,
                "priority": getattr(event, "priority", None)}  # fmt: skip
    if isinstance(event, Ticket.Solved):
        return {"ticket_id": str(event.originator_id), "solved_at": event.solved_at}
    if isinstance(event, Ticket.Rated):
        return {"ticket_id": str(event.originator_id), "csat": event.csat, "raw_score": event.raw_score,
                "customer_supplied": {"comment": event.comment}}  # fmt: skip
    if isinstance(event, SurveyResponse.Recorded):
        return {"response_id": event.response_id, "score": event.score,
                "customer_supplied": {"comment": event.comment, "email": event.email}}  # fmt: skip
    if isinstance(event, EmailEvent.Recorded):
        return {"kind": event.kind, "message_id": event.message_id, "url": event.url, "reason": event.reason,
                "customer_supplied": {"email": event.email}}  # fmt: skip
    return {}


class TimelineProjection(Projection):
    name = "timeline_v1"
    tables = (TIMELINE, SUBJECTS)
    handles = (Customer.Event, Ticket.Event, SurveyResponse.Recorded, EmailEvent.Recorded)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {TIMELINE} (
                position BIGINT PRIMARY KEY, customer_id TEXT NOT NULL, event_id TEXT NOT NULL,
                type TEXT NOT NULL, occurred_at TEXT NOT NULL, recorded_at TEXT NOT NULL,
                actor TEXT NOT NULL, source TEXT NOT NULL, source_id TEXT NOT NULL,
                summary TEXT NOT NULL, details TEXT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{TIMELINE}_customer ON {TIMELINE} (customer_id, occurred_at, position)",
            f"""CREATE TABLE IF NOT EXISTS {SUBJECTS} (aggregate_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
                label TEXT NOT NULL)""",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        self.handle_batch(tx, [(event, position)])

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """Each event's row (and a ticket's subject when it opens); the subjects of tickets opened
        before this batch are read in one query, those opened in it are remembered."""
        subjects: dict[str, tuple[str, str]] = {}  # ticket id -> (customer id, label)
        wanted = sorted({str(e.originator_id) for e, _ in items if isinstance(e, Ticket.Event) and not isinstance(e, Ticket.Opened)})
        for row in tx.fetchall_in(f"SELECT aggregate_id, customer_id, label FROM {SUBJECTS} WHERE aggregate_id", wanted):
            subjects[row["aggregate_id"]] = (row["customer_id"], row["label"])
        for event, position in items:
            ticket_ref = ""
            if isinstance(event, Customer.Event):
                customer_id = str(event.originator_id)
            elif isinstance(event, (Ticket.Opened, SurveyResponse.Recorded, EmailEvent.Recorded)):
                if event.customer_id is None:
                    continue  # unmatched: counted in sync status, on nobody's timeline
                customer_id = event.customer_id
                if isinstance(event, Ticket.Opened):
                    tid = str(event.originator_id)
                    tx.insert(SUBJECTS, ("aggregate_id", "customer_id", "label"), (tid, customer_id, _ticket_ref(event)))
                    subjects[tid] = (customer_id, _ticket_ref(event))
            elif isinstance(event, Ticket.Event):
                subject = subjects.get(str(event.originator_id))
                if subject is None:
                    continue
                customer_id, ticket_ref = subject
            else:
                continue
            tx.insert(
                TIMELINE,
                ("position", "customer_id", "event_id", "type", "occurred_at", "recorded_at", "actor", "source",
                 "source_id", "summary", "details"),
                (
                    position,
                    customer_id,
                    fast_event_id(event.originator_id, event.originator_version),
                    event_type(event),
                    utc_iso(event.occurred_at),
                    utc_iso(event.timestamp),
                    event.actor,
                    event.source,
                    event.source_id,
                    summarise(event, ticket_ref),
                    json.dumps(details(event), sort_keys=True),
                ),
            )  # fmt: skip


class TimelineView:
    def __init__(self, store: ViewStore, codec: PersonalDataCodec) -> None:
        self.store = store
        self.codec = codec

    def for_customer(
        self,
        customer_id: UUID,
        *,
        types: list[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first. ``types`` are prefixes (``customer.`` or ``customer.churned``)."""
        where, params = ["customer_id = ?"], [str(customer_id)]
        if types:
            where.append("(" + " OR ".join("substr(type, 1, ?) = ?" for _ in types) + ")")
            for prefix in types:
                params += [len(prefix), prefix]
        if since is not None:
            where.append("occurred_at >= ?")
            params.append(utc_iso(since))
        if until is not None:
            where.append("occurred_at < ?")
            params.append(utc_iso(until))
        after = decode_cursor(cursor, 2)
        if after is not None:
            where.append("(occurred_at < ? OR (occurred_at = ? AND position < ?))")
            params += [after[0], after[0], after[1]]
        sql = (
            f"SELECT * FROM {TIMELINE} WHERE {' AND '.join(where)}"
            " ORDER BY occurred_at DESC, position DESC LIMIT ?"
        )
        params.append(limit + 1)
        with self.store.snapshot() as tx:
            rows = tx.fetchall(sql, params)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1]["occurred_at"], rows[-1]["position"])
        for row in rows:
            row["details"] = self._reveal(customer_id, json.loads(row["details"]))
        return rows, next_cursor

    def _reveal(self, customer_id: UUID, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out[key] = self._reveal(customer_id, value)
            elif isinstance(value, str) and value.startswith(TOKEN_PREFIX):
                plain = self.codec.decrypt(customer_id, value)
                out[key] = ERASED if plain is None else plain
            else:
                out[key] = value
        return out
