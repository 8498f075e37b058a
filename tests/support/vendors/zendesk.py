"""Zendesk Support: the cursor-based incremental ticket export, tickets, and webhook helpers
(VENDORS.md §1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.vendors.server import (
    VendorFake,
    basic_credentials,
    decode_cursor,
    encode_cursor,
    json_response,
    latest_versions,
)

EXPORT_PATH = "/api/v2/incremental/tickets/cursor.json"
DEFAULT_TIME = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
EVENT_NAMESPACE = uuid.UUID("6f1b1c2e-0d6a-4f5e-9a57-2b3c4d5e6f70")
ERROR_TITLES = {
    400: "InvalidValue",
    401: "Couldn't authenticate you",
    404: "InvalidEndpoint",
    429: "APIRateLimitExceeded",
}

Position = tuple[int, int]  # (generated_timestamp, id): the export's order


class ZendeskFake(VendorFake):
    """``GET /api/v2/incremental/tickets/cursor.json`` over ``tickets`` (a list the test may append to).

    Auth: HTTP Basic ``{email}/token`` : ``api_token``, else 401. The export serves each ticket's
    latest version (greatest ``generated_timestamp``) ordered by ``(generated_timestamp, id)``,
    ``page_size`` per page. A cursor is opaque base64 of a position in that order, so a ticket
    updated after the client passed it is delivered again after the saved ``after_cursor``.
    Normal responses carry ``X-Rate-Limit`` / ``X-Rate-Limit-Remaining``; an injected 429 also
    ``Retry-After: 1`` unless the fault sets it.
    """

    default_path = EXPORT_PATH
    name = "zendesk"

    def __init__(
        self,
        *,
        email: str = "agent@example.com",
        api_token: str = "zendesk-api-token",
        tickets: Iterable[dict[str, Any]] = (),
        page_size: int = 100,
        rate_limit: int = 700,
    ) -> None:
        super().__init__(rate_limit=rate_limit)
        self.email = email
        self.api_token = api_token
        self.tickets: list[dict[str, Any]] = list(tickets)
        self.page_size = page_size

    def routes(self) -> list[Route]:
        return [Route(EXPORT_PATH, self.endpoint(self._export), methods=["GET"])]

    def error_body(self, status: int, message: str) -> object:
        return {"error": ERROR_TITLES.get(status, "ServerError"), "description": message}

    def rate_limit_headers(self, *, exhausted: bool = False) -> dict[str, str]:
        remaining = 0 if exhausted else self.remaining_quota()
        headers = {"X-Rate-Limit": str(self.rate_limit), "X-Rate-Limit-Remaining": str(remaining)}
        if exhausted:
            headers["Retry-After"] = "1"
        return headers

    def _export(self, request: Request, body: bytes) -> Response:
        if basic_credentials(request) != (f"{self.email}/token", self.api_token):
            return json_response(self.error_body(401, "Couldn't authenticate you"), 401)
        try:
            forward, position = _requested_position(request)
        except ValueError as exc:
            return json_response(self.error_body(400, str(exc)), 400)
        stream = sorted(latest_versions(self.tickets, "generated_timestamp"), key=_position)
        if forward:
            page = [t for t in stream if _position(t) > position][: self.page_size]
        else:
            page = [t for t in stream if _position(t) < position][-self.page_size :]
        if page:
            last = _position(page[-1])
        else:  # resume at the position asked for (for "before": including the ticket at it)
            last = position if forward else (position[0], position[1] - 1)
        after_cursor = encode_cursor({"after": list(last)})
        before_cursor = encode_cursor({"before": list(_position(page[0]))}) if page else None
        document = {
            "tickets": page,
            "after_url": _cursor_url(request, after_cursor),
            "after_cursor": after_cursor,
            "before_url": _cursor_url(request, before_cursor) if before_cursor else None,
            "before_cursor": before_cursor,
            "end_of_stream": not any(_position(t) > last for t in stream),
        }
        return json_response(document, headers=self.rate_limit_headers())


def _position(ticket: dict[str, Any]) -> Position:
    return (int(ticket["generated_timestamp"]), int(ticket["id"]))


def _requested_position(request: Request) -> tuple[bool, Position]:
    """(forward?, position) from ``cursor`` or, on a first call, ``start_time``; ValueError if neither is valid."""
    cursor = request.query_params.get("cursor")
    if cursor is not None:
        try:
            ((direction, (timestamp, ticket_id)),) = decode_cursor(cursor).items()
            if direction not in ("after", "before"):
                raise ValueError(direction)
            return direction == "after", (int(timestamp), int(ticket_id))
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid cursor {cursor!r}") from exc
    start_time = request.query_params.get("start_time")
    if start_time is None or not start_time.isdigit():
        raise ValueError("start_time (unix seconds) or cursor is required")
    return True, (int(start_time), -1)  # every ticket with generated_timestamp >= start_time


def _cursor_url(request: Request, cursor: str) -> str:
    """The absolute URL of the export on this server with only ``cursor`` as query."""
    return str(request.url.replace(query=urlencode({"cursor": cursor})))


def zendesk_time(moment: datetime) -> str:
    """Zendesk's timestamp format, e.g. ``2011-05-05T10:38:52Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zendesk_ticket(
    ticket_id: int,
    org_id: int | None,
    *,
    status: str = "open",
    priority: str | None = "normal",
    subject: str | None = None,
    updated_at: datetime = DEFAULT_TIME,
    created_at: datetime | None = None,
    csat: str | None = None,
    csat_comment: str | None = None,
    requester_id: int | None = None,
    generated_timestamp: int | None = None,
    tags: Sequence[str] = (),
) -> dict[str, Any]:
    """A ticket as the export returns it. ``generated_timestamp`` defaults to ``updated_at``;
    ``csat`` is a satisfaction score (``good``, ``bad``, ``offered``; None means ``unoffered``)."""
    rating: dict[str, Any] = {"score": csat or "unoffered"}
    if csat in ("good", "bad"):
        rating = {"id": ticket_id * 10 + 1, "score": csat, "comment": csat_comment, "reason": None}
    return {
        "id": ticket_id,
        "status": status,
        "priority": priority,
        "type": "incident",
        "subject": subject if subject is not None else f"Ticket {ticket_id}",
        "requester_id": requester_id if requester_id is not None else 20_000 + ticket_id,
        "organization_id": org_id,
        "assignee_id": 235323,
        "group_id": 98738,
        "tags": list(tags),
        "created_at": zendesk_time(created_at or updated_at),
        "updated_at": zendesk_time(updated_at),
        "generated_timestamp": (
            generated_timestamp if generated_timestamp is not None else int(updated_at.timestamp())
        ),
        "satisfaction_rating": rating,
        "via": {"channel": "web"},
        "custom_fields": [],
    }


def zendesk_signature(secret: str, timestamp_iso: str, body: bytes) -> str:
    """``X-Zendesk-Webhook-Signature``: base64 of the binary HMAC-SHA256 of timestamp + body."""
    digest = hmac.new(secret.encode(), timestamp_iso.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def zendesk_webhook_headers(
    secret: str, body: bytes, *, timestamp_iso: str, webhook_id: str = "01HWEBHOOKFAKE0000000000000"
) -> dict[str, str]:
    """The three headers Zendesk sends with a signed webhook delivery."""
    return {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Id": webhook_id,
        "X-Zendesk-Webhook-Signature": zendesk_signature(secret, timestamp_iso, body),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp_iso,
    }


def zendesk_ticket_event(
    ticket: dict[str, Any],
    *,
    event_type: str = "ticket.created",
    event_id: str | None = None,
    account_id: int = 88888888,
) -> dict[str, Any]:
    """An event-subscription payload (``zen:event-type:{event_type}``) about ``ticket`` (from
    ``zendesk_ticket``). Ids in ``detail`` are strings and statuses capitalised, as in the
    vendor's sample; ``id`` defaults to a stable UUID of (type, ticket id, generated_timestamp)."""
    stable = f"{event_type}:{ticket['id']}:{ticket['generated_timestamp']}"
    status = str(ticket["status"]).capitalize()

    def as_str(value: object) -> str | None:
        return None if value is None else str(value)

    return {
        "type": f"zen:event-type:{event_type}",
        "account_id": account_id,
        "id": event_id or str(uuid.uuid5(EVENT_NAMESPACE, stable)),
        "time": ticket["updated_at"],
        "zendesk_event_version": "2022-11-06",
        "subject": f"zen:ticket:{ticket['id']}",
        "detail": {
            "id": str(ticket["id"]),
            "actor_id": as_str(ticket["requester_id"]),
            "assignee_id": as_str(ticket["assignee_id"]),
            "brand_id": "360000000001",
            "created_at": ticket["created_at"],
            "updated_at": ticket["updated_at"],
            "group_id": as_str(ticket["group_id"]),
            "organization_id": as_str(ticket["organization_id"]),
            "priority": None if ticket["priority"] is None else str(ticket["priority"]).capitalize(),
            "requester_id": as_str(ticket["requester_id"]),
            "status": status,
            "subject": ticket["subject"],
            "tags": ticket["tags"],
            "type": str(ticket["type"]).capitalize(),
            "via": ticket["via"],
        },
        "event": {
            "current": {"status": status},
            "meta": {"sequence": {"id": str(uuid.uuid5(EVENT_NAMESPACE, "seq:" + stable)), "position": 1, "total": 1}},
        },
    }
