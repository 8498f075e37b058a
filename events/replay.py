"""Replay: a customer's state as it was at a past instant, folded from the stored events.

``customer_state_as_of`` reads the customer's own stored events (with their log
positions) and folds, in version order, those that occurred at or before ``as_of``; with
``known_at`` it also leaves out events recorded after that instant ("what did we know
then"). So a backfilled import counts where it belongs in the world's time, and an audit
can still ask what the system knew before that import.

The fold is written here, not borrowed from the aggregate: the aggregate insists on an
unbroken version sequence, and a replay as of an instant legitimately skips events (a
backfill recorded later with an earlier ``occurred_at``). It mirrors ``events.domain``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.sqlite import SQLiteApplicationRecorder

from events.domain import CONTRACT_FIELDS, PROFILE_FIELDS, Customer, event_type
from events.personal import ERASED, PersonalDataCodec

def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime (naive = UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def customer_notifications(recorder: Any, customer_id: UUID) -> list[Notification]:
    """The customer's stored events in version order, each with its log position.

    ``select_events`` does not return positions, so this reads the recorder's table
    directly (indexed by originator id on both backends)."""
    table = recorder.events_table_name
    if isinstance(recorder, SQLiteApplicationRecorder):
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT rowid, * FROM {table} WHERE originator_id = ? ORDER BY originator_version",
                (customer_id.hex,),  # the SQLite recorder stores UUIDs as hex
            )
            rows = cursor.fetchall()
        position_column = "rowid"
    else:  # PostgreSQL
        from psycopg.sql import SQL, Identifier

        statement = SQL("SELECT * FROM {}.{} WHERE originator_id = %s ORDER BY originator_version").format(
            Identifier(recorder.datastore.schema), Identifier(table)
        )
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(statement, (customer_id,))
            rows = cursor.fetchall()
        position_column = "notification_id"
    return [
        Notification(
            id=int(row[position_column]),
            originator_id=customer_id,
            originator_version=int(row["originator_version"]),
            topic=row["topic"],
            state=bytes(row["state"]),
        )
        for row in rows
    ]


def _reveal(codec: PersonalDataCodec, customer_id: UUID, contact: dict[str, Any]) -> dict[str, Any]:
    """Decrypt a contact's personal fields; both read '[erased]' once the key is gone."""
    name = codec.decrypt(customer_id, contact["name"])
    email = codec.decrypt(customer_id, contact["email"])
    erased = (contact["name"] and name is None) or (contact["email"] and email is None)
    return {
        **contact,
        "name": ERASED if erased and contact["name"] else name,
        "email": ERASED if erased and contact["email"] else email,
    }


def fold(events: list[tuple[int, Any]]) -> dict[str, Any] | None:
    """Fold ``(position, domain event)`` pairs (version order) into a state; None without
    the registration (the customer did not exist yet). Personal fields stay tokens."""
    state: dict[str, Any] | None = None
    for position, event in events:
        if isinstance(event, Customer.Registered):
            state = {
                "id": str(event.originator_id),
                "external_key": event.external_key,
                "profile": {f: event.profile.get(f) for f in (*PROFILE_FIELDS, *CONTRACT_FIELDS)},
                "contacts": {},
                "status": "active",
                "churned_on": None,
                "churn_reason": None,
                "registered_at": as_utc(event.occurred_at),
                "events": [],
            }
        elif state is None:
            continue  # nothing before the registration can apply
        elif isinstance(event, (Customer.ProfileUpdated, Customer.ContractChanged)):
            for change in event.changes:
                state["profile"][change["field"]] = change["new"]
        elif isinstance(event, Customer.ContactAdded):
            if event.primary:
                for contact in state["contacts"].values():
                    contact["primary"] = False
            state["contacts"][event.contact_id] = {
                "contact_id": event.contact_id, "name": event.name, "email": event.email,
                "role": event.role, "primary": event.primary,
            }  # fmt: skip
        elif isinstance(event, Customer.ContactRemoved):
            state["contacts"].pop(event.contact_id, None)
        elif isinstance(event, Customer.Churned):
            state.update(status="churned", churned_on=event.churned_on, churn_reason=event.reason)
        state["events"].append(
            {
                "position": position,
                "type": event_type(event),
                "occurred_at": as_utc(event.occurred_at),
                "recorded_at": as_utc(event.timestamp),
            }
        )
    return state


def customer_state_as_of(
    app: Any, client_id: str, as_of: datetime, known_at: datetime | None = None
) -> dict[str, Any] | None:
    """The customer's state as of ``as_of`` (and as known at ``known_at``), or None when it
    did not exist yet at that instant. Raises ``CustomerNotFoundError`` for an unknown id.

    The state: ``id``, ``external_key``, ``profile`` (profile and contract fields),
    ``contacts`` (personal fields decrypted, '[erased]' when the key is gone), ``status``,
    ``churned_on``, ``churn_reason``, ``registered_at``, ``events`` (each applied event's
    position, type, occurred_at and recorded_at), ``last_position``, ``as_of`` and ``known_at``.
    (Health is the health model's, from the views: ``mcp_server.tools.governance.state_as_of``.)"""
    as_of = as_utc(as_of)
    known = as_utc(known_at) if known_at is not None else None
    customer_id = app.resolve(client_id)
    selected: list[tuple[int, Any]] = []
    for notification in customer_notifications(app.recorder, customer_id):
        event = app.mapper.to_domain_event(notification)
        if as_utc(event.occurred_at) > as_of:
            continue
        if known is not None and as_utc(event.timestamp) > known:
            continue
        selected.append((notification.id, event))
    state = fold(selected)
    if state is None:
        return None
    state["contacts"] = [_reveal(app.codec, customer_id, c) for c in state["contacts"].values()]
    state["last_position"] = state["events"][-1]["position"]
    state["as_of"] = as_of
    state["known_at"] = known
    return state
