"""Intercom: conversations (tickets of the chat world) from search, webhooks and files.

- ``translate(conversation)`` -> TicketSnapshot. Company: ``company_id`` in the conversation's
  ``custom_attributes`` (or a ``company`` object), else the author's e-mail domain. CSAT is
  ``conversation_rating.rating`` (1-5), mapped to 0..1.
- ``verify_webhook``: ``X-Hub-Signature: sha1=<hex HMAC-SHA1(client_secret, raw body)>``.
- ``fetch_pages``: POST /conversations/search with ``updated_at > since`` and the cursor in
  the body (``pagination.starting_after``); the stored cursor is the newest ``updated_at`` seen
  once a search completes (Intercom's search cursors are not durable across searches).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Iterable
from typing import Any

from connectors.common import fetch_page, parse_time, require, text_or_none
from connectors.matching import CustomerDirectory, match
from events.errors import InvalidInputError
from events.ingest import Match, Rating, TicketSnapshot

VENDOR = "intercom"
SEARCH_PATH = "/conversations/search"
SIGNATURE_HEADER = "x-hub-signature"
PAGE_SIZE = 50


def _company(conversation: dict[str, Any]) -> str | None:
    attrs = conversation.get("custom_attributes") or {}
    if isinstance(attrs, dict) and attrs.get("company_id"):
        return str(attrs["company_id"])
    company = conversation.get("company")
    if isinstance(company, dict) and company.get("id"):
        return str(company["id"])
    return None


def translate(conversation: dict[str, Any]) -> TicketSnapshot:
    if not isinstance(conversation, dict):
        raise InvalidInputError("conversation", "expected a JSON object")
    cid = require(conversation, "id", "conversation")
    created = parse_time(require(conversation, "created_at", "conversation"), "conversation.created_at")
    updated = parse_time(conversation.get("updated_at") or conversation["created_at"], "conversation.updated_at")
    source = conversation.get("source") or {}
    author = (source.get("author") or {}) if isinstance(source, dict) else {}
    rating = None
    raw_rating = conversation.get("conversation_rating")
    if isinstance(raw_rating, dict) and isinstance(raw_rating.get("rating"), int) and 1 <= raw_rating["rating"] <= 5:
        rated_at = parse_time(raw_rating.get("created_at") or conversation.get("updated_at"), "conversation_rating.created_at")
        rating = Rating((raw_rating["rating"] - 1) / 4, str(raw_rating["rating"]), text_or_none(raw_rating.get("remark")), rated_at)
    priority = conversation.get("priority")
    return TicketSnapshot(
        vendor=VENDOR,
        vendor_id=str(cid),
        org_ref=_company(conversation),
        requester_email=text_or_none(author.get("email") if isinstance(author, dict) else None, 320),
        subject=text_or_none((source.get("subject") or source.get("body")) if isinstance(source, dict) else None),
        status=str(conversation.get("state") or ("open" if conversation.get("open") else "closed")).lower(),
        priority="high" if priority == "priority" else ("normal" if priority else None),
        channel=text_or_none(source.get("delivered_as") if isinstance(source, dict) else None, 40),
        created_at=created,
        updated_at=updated,
        rating=rating,
    )


def translate_webhook(payload: dict[str, Any]) -> TicketSnapshot | None:
    """A ``notification_event``; None for topics without a conversation (e.g. ``ping``)."""
    if not isinstance(payload, dict) or payload.get("type") != "notification_event":
        raise InvalidInputError("type", "expected an Intercom notification_event")
    item = ((payload.get("data") or {}).get("item")) if isinstance(payload.get("data"), dict) else None
    if not isinstance(item, dict) or item.get("type") != "conversation":
        return None
    return translate(item)


def match_conversation(directory: CustomerDirectory, snapshot: TicketSnapshot) -> Match:
    return match(directory, source_field="intercom_company_id", source_value=snapshot.org_ref, email=snapshot.requester_email)


def file_conversations(data: Any) -> Iterable[Any]:
    if isinstance(data, dict) and isinstance(data.get("conversations"), list):
        return data["conversations"]
    if isinstance(data, list):
        return data
    raise InvalidInputError("file", "expected a JSON list of conversation objects")


def verify_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    signature = headers.get(SIGNATURE_HEADER, "")
    if not secret or not signature.startswith("sha1="):
        return False
    expected = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())  # bytes: a non-ASCII header is a mismatch, not a crash


async def fetch_pages(client: Any, since: int) -> AsyncIterator[dict[str, Any]]:
    """Search pages of conversations updated after ``since`` (unix), cursor in the body."""
    body: dict[str, Any] = {
        "query": {"operator": "AND", "value": [{"field": "updated_at", "operator": ">", "value": since}]},
        "pagination": {"per_page": PAGE_SIZE},
    }
    while True:
        page = await fetch_page(lambda b=body: client.post_json(SEARCH_PATH, b), vendor=VENDOR)
        if not isinstance(page, dict) or not isinstance(page.get("conversations"), list):
            raise InvalidInputError("page.conversations", "missing; expected a conversation.list page")
        yield page
        following = ((page.get("pages") or {}).get("next") or {}).get("starting_after")
        if not following:
            return
        body = {**body, "pagination": {"per_page": PAGE_SIZE, "starting_after": following}}
