"""Zendesk Support: tickets from the incremental cursor export, webhooks and export files.

- ``translate(ticket)``: one ticket of the export (or of a file) -> a TicketSnapshot.
- ``translate_webhook(payload)``: an event-subscription delivery -> a TicketSnapshot.
- ``verify_webhook``: base64(HMAC-SHA256(secret, timestamp + raw body)), timestamp ISO 8601.
- ``fetch_pages``: GET /api/v2/incremental/tickets/cursor.json?start_time=… then ?cursor=…,
  until ``end_of_stream``; the cursor to store is the page's ``after_cursor``.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from connectors.common import fetch_page, parse_time, require, text_or_none
from connectors.matching import CustomerDirectory, match
from events.errors import InvalidInputError
from events.ingest import Match, Rating, TicketSnapshot

VENDOR = "zendesk"
EXPORT_PATH = "/api/v2/incremental/tickets/cursor.json"
SIGNATURE_HEADER = "x-zendesk-webhook-signature"
TIMESTAMP_HEADER = "x-zendesk-webhook-signature-timestamp"
RATINGS = {"good": 1.0, "bad": 0.0}


def translate(ticket: dict[str, Any], users: dict[int, str] | None = None) -> TicketSnapshot:
    """A ticket of the incremental export. ``users`` (id -> e-mail) comes from a users sideload."""
    if not isinstance(ticket, dict):
        raise InvalidInputError("ticket", "expected a JSON object")
    ticket_id = require(ticket, "id", "ticket")
    created = parse_time(require(ticket, "created_at", "ticket"), "ticket.created_at")
    updated = parse_time(ticket.get("updated_at") or ticket["created_at"], "ticket.updated_at")
    generated = ticket.get("generated_timestamp")
    if isinstance(generated, (int, float)):  # the export's own change clock (VENDORS §1)
        updated = max(updated, parse_time(generated, "ticket.generated_timestamp"))
    requester = None
    via = ticket.get("via") or {}
    source_from = ((via.get("source") or {}).get("from") or {}) if isinstance(via, dict) else {}
    if isinstance(source_from, dict):
        requester = source_from.get("address")
    if not requester and users and ticket.get("requester_id") is not None:
        requester = users.get(ticket["requester_id"])
    rating = None
    sat = ticket.get("satisfaction_rating")
    if isinstance(sat, dict) and sat.get("score") in RATINGS:
        rating = Rating(RATINGS[sat["score"]], sat["score"], text_or_none(sat.get("comment")), updated)
    org = ticket.get("organization_id")
    return TicketSnapshot(
        vendor=VENDOR,
        vendor_id=str(ticket_id),
        org_ref=str(org) if org is not None else None,
        requester_email=text_or_none(requester, 320),
        subject=text_or_none(ticket.get("subject") or ticket.get("raw_subject")),
        status=str(require(ticket, "status", "ticket")).lower(),
        priority=(str(ticket["priority"]).lower() if ticket.get("priority") else None),
        channel=text_or_none(via.get("channel") if isinstance(via, dict) else None, 40),
        created_at=created,
        updated_at=updated,
        rating=rating,
    )


def translate_page(page: dict[str, Any]) -> tuple[list[TicketSnapshot | InvalidInputError], str | None, bool]:
    """Snapshots (or the error of each bad ticket), the after_cursor, and end_of_stream."""
    if not isinstance(page, dict) or not isinstance(page.get("tickets"), list):
        raise InvalidInputError("page.tickets", "missing; expected an incremental export page")
    users = {u["id"]: u.get("email") for u in page.get("users") or [] if isinstance(u, dict) and "id" in u}
    out: list[TicketSnapshot | InvalidInputError] = []
    for ticket in page["tickets"]:
        try:
            out.append(translate(ticket, users))
        except InvalidInputError as exc:
            out.append(exc)
    return out, page.get("after_cursor"), bool(page.get("end_of_stream"))


def translate_webhook(payload: dict[str, Any]) -> TicketSnapshot | None:
    """A ``zen:event-type:ticket.*`` delivery; None for event types that carry no ticket."""
    if not isinstance(payload, dict):
        raise InvalidInputError("body", "expected a JSON object")
    kind = str(payload.get("type") or "")
    if not kind.startswith("zen:event-type:ticket."):
        return None
    detail = payload.get("detail")
    if not isinstance(detail, dict):
        raise InvalidInputError("detail", "missing; a ticket event carries the ticket in detail")
    ticket = dict(detail)
    ticket.setdefault("updated_at", payload.get("time"))
    ticket.setdefault("created_at", ticket.get("updated_at"))
    current = ((payload.get("event") or {}).get("current") or {}) if isinstance(payload.get("event"), dict) else {}
    if isinstance(current, dict) and "status" in current and "status" not in ticket:
        ticket["status"] = current["status"]
    return translate(ticket)


def match_ticket(directory: CustomerDirectory, snapshot: TicketSnapshot) -> Match:
    return match(directory, source_field="zendesk_org_id", source_value=snapshot.org_ref, email=snapshot.requester_email)


def file_pages(data: Any) -> Iterable[dict[str, Any]]:
    """A file is one export page or a JSON array of pages."""
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and all(isinstance(p, dict) for p in data):
        return data
    raise InvalidInputError("file", "expected an incremental export page ({\"tickets\": [...]}) or an array of pages")


def verify_webhook(secret: str, headers: dict[str, str], body: bytes, *, now: datetime | None = None,
                   tolerance: timedelta = timedelta(minutes=5)) -> bool:  # fmt: skip
    """True when the signature is valid and its timestamp within ``tolerance`` of now."""
    signature, stamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not stamp or not secret:
        return False
    try:
        sent = parse_time(stamp, "timestamp")
    except InvalidInputError:
        return False
    if abs((now or datetime.now(timezone.utc)) - sent) > tolerance:
        return False
    expected = base64.b64encode(hmac.digest(secret.encode(), stamp.encode() + body, "sha256")).decode()
    return hmac.compare_digest(expected.encode(), signature.encode())  # bytes: a non-ASCII header is a mismatch, not a crash


async def fetch_pages(client: Any, cursor: str | None, start_time: int) -> AsyncIterator[dict[str, Any]]:
    """Export pages from ``cursor`` (or ``start_time`` on a first sync), until end_of_stream."""
    params: dict[str, Any] = {"cursor": cursor} if cursor else {"start_time": start_time}
    while True:
        page = await fetch_page(lambda p=params: client.get_json(EXPORT_PATH, params=p), vendor=VENDOR)
        yield page
        if not isinstance(page, dict) or page.get("end_of_stream") or not page.get("after_cursor"):
            return
        params = {"cursor": page["after_cursor"]}
