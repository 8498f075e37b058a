"""Intercom: conversation search with the cursor in the body, conversations, and webhook helpers
(VENDORS.md §2).

Company linkage: a conversation carries no company. ``intercom_conversation`` puts the customer's
email on ``source.author.email`` (the connector maps it by email domain) and, when a
``company_id`` is given, ``custom_attributes.company_id`` (a conversation data attribute the
workspace defines; Intercom's real company link goes through the contact's companies).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.vendors.server import (
    VendorFake,
    bearer_token,
    decode_cursor,
    encode_cursor,
    json_response,
    latest_versions,
    reset_at,
)

SEARCH_PATH = "/conversations/search"
DEFAULT_TIME = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 150
RATE_WINDOW = 10  # seconds; Intercom enforces its limit per 10-second window
ERROR_CODES = {400: "parameter_invalid", 401: "unauthorized", 404: "not_found", 429: "rate_limit_exceeded"}
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda have, want: have == want,
    "!=": lambda have, want: have != want,
    ">": lambda have, want: have is not None and have > want,
    "<": lambda have, want: have is not None and have < want,
    "IN": lambda have, want: have in want,
    "NIN": lambda have, want: have not in want,
}


class SearchError(ValueError):
    """A search body the API rejects with 400 ``parameter_invalid``."""


class IntercomFake(VendorFake):
    """``POST /conversations/search`` over ``conversations`` (a list the test may append to).

    Auth: ``Authorization: Bearer {token}``, else 401; any ``Intercom-Version`` is accepted (the
    log keeps it). The query supports AND/OR nesting and the operators = != > < IN NIN on dotted
    field paths. Results are each conversation's latest version (greatest ``updated_at``), ordered
    by ``(updated_at, id)``; ``starting_after`` is read only from the body (a query-string cursor
    is ignored: page 1 again). Every response carries ``X-RateLimit-Limit`` / ``-Remaining`` /
    ``-Reset`` (unix: the end of the current 10-second window; now + 1 s on an injected 429).
    """

    default_path = SEARCH_PATH
    name = "intercom"

    def __init__(
        self,
        *,
        token: str = "intercom-access-token",
        conversations: Iterable[dict[str, Any]] = (),
        rate_limit: int = 167,
    ) -> None:
        super().__init__(rate_limit=rate_limit)
        self.token = token
        self.conversations: list[dict[str, Any]] = list(conversations)

    def routes(self) -> list[Route]:
        return [Route(SEARCH_PATH, self.endpoint(self._search), methods=["POST"])]

    def error_body(self, status: int, message: str) -> object:
        code = ERROR_CODES.get(status, "server_error")
        return {"type": "error.list", "request_id": "fake-request", "errors": [{"code": code, "message": message}]}

    def rate_limit_headers(self, *, exhausted: bool = False) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(0 if exhausted else self.remaining_quota()),
            "X-RateLimit-Reset": str(reset_at(RATE_WINDOW, exhausted=exhausted)),
        }

    def _search(self, request: Request, body: bytes) -> Response:
        if bearer_token(request) != self.token:
            return json_response(self.error_body(401, "Access Token Invalid"), 401, self.rate_limit_headers())
        try:
            query, per_page, after, page = _parse_search(body)
            matching = sorted(
                (c for c in latest_versions(self.conversations, "updated_at") if _matches(c, query)),
                key=_position,
            )
        except SearchError as exc:
            return json_response(self.error_body(400, str(exc)), 400, self.rate_limit_headers())
        rest = [c for c in matching if after is None or _position(c) > after]
        results = rest[:per_page]
        pages: dict[str, Any] = {
            "type": "pages",
            "page": page,
            "per_page": per_page,
            "total_pages": math.ceil(len(matching) / per_page),
        }
        if len(rest) > per_page:
            pages["next"] = {"page": page + 1, "starting_after": encode_cursor([*_position(results[-1]), page + 1])}
        document = {
            "type": "conversation.list",
            "conversations": results,
            "total_count": len(matching),
            "pages": pages,
        }
        return json_response(document, headers=self.rate_limit_headers())


def _position(conversation: dict[str, Any]) -> tuple[int, str]:
    return (int(conversation["updated_at"]), str(conversation["id"]))


def _parse_search(body: bytes) -> tuple[dict[str, Any], int, tuple[int, str] | None, int]:
    """(query, per_page, position after which to start or None, page number) from a search body."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise SearchError("request body is not valid JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("query"), dict):
        raise SearchError("query is required and must be an object")
    pagination = document.get("pagination") or {}
    if not isinstance(pagination, dict):
        raise SearchError("pagination must be an object")
    per_page = pagination.get("per_page", DEFAULT_PER_PAGE)
    if not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
        raise SearchError(f"per_page must be an integer between 1 and {MAX_PER_PAGE}")
    cursor = pagination.get("starting_after")
    if cursor is None:
        return document["query"], per_page, None, 1
    try:
        updated_at, conversation_id, page = decode_cursor(str(cursor))
        return document["query"], per_page, (int(updated_at), str(conversation_id)), int(page)
    except (TypeError, ValueError) as exc:
        raise SearchError(f"starting_after {cursor!r} is not a valid cursor") from exc


def _matches(conversation: dict[str, Any], query: dict[str, Any]) -> bool:
    """Whether ``conversation`` satisfies a search query (nested AND/OR of field comparisons)."""
    operator = query.get("operator")
    if operator in ("AND", "OR"):
        clauses = query.get("value")
        if not isinstance(clauses, list) or not clauses:
            raise SearchError(f"{operator} needs a non-empty list of queries as value")
        results = [_matches(conversation, clause) for clause in clauses]
        return all(results) if operator == "AND" else any(results)
    compare = COMPARISONS.get(str(operator))
    field = query.get("field")
    if compare is None or not isinstance(field, str) or "value" not in query:
        raise SearchError(f"unsupported query {query!r}")
    have: Any = conversation
    for part in field.split("."):
        have = have.get(part) if isinstance(have, dict) else None
    want = query["value"]
    if operator in ("IN", "NIN") and not isinstance(want, list):
        raise SearchError(f"{operator} needs a list as value")
    if isinstance(have, int) and isinstance(want, str) and want.isdigit():
        want = int(want)  # Intercom accepts timestamps as strings
    try:
        return bool(compare(have, want))
    except TypeError as exc:
        raise SearchError(f"cannot compare {field} with {want!r}") from exc


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def intercom_contact_id(email: str) -> str:
    """A stable Intercom-style contact id for an email address."""
    return hashlib.sha1(email.lower().encode()).hexdigest()[:24]


def intercom_conversation(
    conversation_id: int | str,
    author_email: str,
    *,
    state: str = "open",
    priority: str = "not_priority",
    created_at: datetime = DEFAULT_TIME,
    updated_at: datetime | None = None,
    rating: int | None = None,
    remark: str | None = None,
    company_id: str | None = None,
    first_reply_seconds: int | None = 300,
    body: str = "<p>We need help with our account.</p>",
) -> dict[str, Any]:
    """A conversation as search returns it (id as a string, unix timestamps). ``rating`` (1-5)
    fills ``conversation_rating``; ``company_id`` sets ``custom_attributes.company_id``."""
    created = _unix(created_at)
    updated = _unix(updated_at or created_at)
    contact_id = intercom_contact_id(author_email)
    closed = updated if state == "closed" else None
    replied = created + first_reply_seconds if first_reply_seconds is not None else None
    return {
        "type": "conversation",
        "id": str(conversation_id),
        "title": None,
        "created_at": created,
        "updated_at": updated,
        "waiting_since": created if state == "open" and replied is None else None,
        "snoozed_until": updated + 86400 if state == "snoozed" else None,
        "state": state,
        "open": state != "closed",
        "read": True,
        "priority": priority,
        "admin_assignee_id": 814860,
        "team_assignee_id": None,
        "tags": {"type": "tag.list", "tags": []},
        "custom_attributes": {"company_id": company_id} if company_id is not None else {},
        "source": {
            "type": "conversation",
            "id": f"src-{conversation_id}",
            "delivered_as": "customer_initiated",
            "subject": "",
            "body": body,
            "author": {
                "type": "user",
                "id": contact_id,
                "name": author_email.split("@")[0].title(),
                "email": author_email,
            },
            "attachments": [],
            "url": None,
        },
        "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": contact_id, "external_id": None}]},
        "teammates": {"type": "admin.list", "admins": [{"type": "admin", "id": "814860"}]},
        "conversation_rating": None
        if rating is None
        else {
            "rating": rating,
            "remark": remark,
            "created_at": updated,
            "contact": {"type": "contact", "id": contact_id},
            "teammate": {"type": "admin", "id": "814860"},
        },
        "statistics": {
            "type": "conversation_statistics",
            "time_to_assignment": 0,
            "time_to_admin_reply": first_reply_seconds,
            "time_to_first_close": closed - created if closed is not None else None,
            "time_to_last_close": closed - created if closed is not None else None,
            "median_time_to_reply": first_reply_seconds,
            "first_contact_reply_at": created,
            "first_admin_reply_at": replied,
            "first_close_at": closed,
            "last_close_at": closed,
            "last_contact_reply_at": created,
            "last_admin_reply_at": replied,
            "count_reopens": 0,
            "count_assignments": 1,
            "count_conversation_parts": 1 if replied is None else 2,
        },
    }


def intercom_signature(client_secret: str, body: bytes) -> str:
    """``X-Hub-Signature``: ``sha1=`` + hex HMAC-SHA1 of the raw body with the app's client secret."""
    return "sha1=" + hmac.new(client_secret.encode(), body, hashlib.sha1).hexdigest()


def intercom_notification(
    topic: str,
    conversation: dict[str, Any],
    *,
    notification_id: str | None = None,
    app_id: str = "d90noo0b",
) -> dict[str, Any]:
    """A ``notification_event`` for ``topic`` carrying ``conversation`` as its item. The id
    defaults to a stable ``notif_…`` of (topic, conversation id, updated_at)."""
    stable = f"{topic}:{conversation['id']}:{conversation['updated_at']}"
    return {
        "type": "notification_event",
        "app_id": app_id,
        "id": notification_id or "notif_" + hashlib.sha1(stable.encode()).hexdigest()[:32],
        "topic": topic,
        "delivery_status": "pending",
        "delivery_attempts": 1,
        "first_sent_at": conversation["updated_at"],
        "created_at": conversation["updated_at"],
        "data": {"type": "notification_event_data", "item": conversation},
    }
