"""Timeline view: every event of a customer, with who, where from, when, and a summary.

Rows are derived from the event log only; personal fields in ``details`` stay as
encrypted tokens and are decrypted when read (so erasure reaches the timeline too).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from events.domain import Customer, event_id, event_type
from events.personal import ERASED, TOKEN_PREFIX, PersonalDataCodec
from projections.base import Projection, utc_iso
from projections.cursor import decode_cursor, encode_cursor
from projections.store import Tx, ViewStore

TIMELINE = "cs_timeline_v1"


def _fmt(value: Any) -> str:
    return "none" if value is None else str(value)


def summarise(event: Any) -> str:
    """One line a CSM can read. Never includes personal data."""
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
    return {}


class TimelineProjection(Projection):
    name = "timeline_v1"
    tables = (TIMELINE,)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {TIMELINE} (
                position BIGINT PRIMARY KEY, customer_id TEXT NOT NULL, event_id TEXT NOT NULL,
                type TEXT NOT NULL, occurred_at TEXT NOT NULL, recorded_at TEXT NOT NULL,
                actor TEXT NOT NULL, source TEXT NOT NULL, source_id TEXT NOT NULL,
                summary TEXT NOT NULL, details TEXT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{TIMELINE}_customer ON {TIMELINE} (customer_id, occurred_at, position)",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if not isinstance(event, Customer.Event):
            return
        tx.execute(
            f"INSERT INTO {TIMELINE} (position, customer_id, event_id, type, occurred_at, recorded_at, actor,"
            " source, source_id, summary, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                position,
                str(event.originator_id),
                str(event_id(event)),
                event_type(event),
                utc_iso(event.occurred_at),
                utc_iso(event.timestamp),
                event.actor,
                event.source,
                event.source_id,
                summarise(event),
                json.dumps(details(event), sort_keys=True),
            ),
        )


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
        out = {}
        for key, value in data.items():
            if isinstance(value, str) and value.startswith(TOKEN_PREFIX):
                plain = self.codec.decrypt(customer_id, value)
                out[key] = ERASED if plain is None else plain
            else:
                out[key] = value
        return out
