"""SendGrid: v3 mail send, the signed Event Webhook's signer and its events (VENDORS.md §4)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.vendors.server import VendorFake, bearer_token, json_response, reset_at

MAIL_PATH = "/v3/mail/send"
MAX_RECIPIENTS = 1000
RATE_WINDOW = 60  # seconds
EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "processed": {},
    "deferred": {"response": "400 try again later", "attempt": "1"},
    "delivered": {"response": "250 OK", "ip": "168.1.1.1"},
    "open": {"sg_machine_open": False, "useragent": "Mozilla/5.0", "ip": "255.255.255.255"},
    "click": {"url": "https://example.com/start", "useragent": "Mozilla/5.0", "ip": "255.255.255.255"},
    "bounce": {
        "reason": "550 5.1.1 unknown user",
        "status": "5.0.0",
        "bounce_classification": "Invalid Address",
        "type": "bounce",
    },
    "dropped": {"reason": "Bounced Address"},
    "spamreport": {},
    "unsubscribe": {},
    "group_unsubscribe": {"asm_group_id": 10, "url": "https://example.com/unsubscribe"},
    "group_resubscribe": {"asm_group_id": 10, "url": "https://example.com/resubscribe"},
}


@dataclass(frozen=True)
class SentMail:
    """A mail the fake accepted: the ``X-Message-Id`` it answered and the request body."""

    message_id: str
    body: dict[str, Any]


class SendGridFake(VendorFake):
    """``POST /v3/mail/send``: Bearer ``api_key`` (else 401), body validated (400
    ``{"errors":[{"field","message"}]}`` naming every bad field), else 202 with an empty body and
    ``X-Message-Id``; accepted mails are appended to ``sent``. Every answer carries
    ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (unix: the end of the current minute;
    now + 1 s on an injected 429).
    """

    default_path = MAIL_PATH
    name = "sendgrid"

    def __init__(self, *, api_key: str = "SG.fake-api-key", rate_limit: int = 600) -> None:
        super().__init__(rate_limit=rate_limit)
        self.api_key = api_key
        self.sent: list[SentMail] = []

    def routes(self) -> list[Route]:
        return [Route(MAIL_PATH, self.endpoint(self._send), methods=["POST"])]

    def error_body(self, status: int, message: str) -> object:
        return {"errors": [{"field": None, "message": message, "help": None}]}

    def rate_limit_headers(self, *, exhausted: bool = False) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(0 if exhausted else self.remaining_quota()),
            "X-RateLimit-Reset": str(reset_at(RATE_WINDOW, exhausted=exhausted)),
        }

    def _send(self, request: Request, body: bytes) -> Response:
        headers = self.rate_limit_headers()
        if bearer_token(request) != self.api_key:
            message = "The provided authorization grant is invalid, expired, or revoked"
            return json_response(self.error_body(401, message), 401, headers)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            return json_response(self.error_body(400, "Bad Request: the body must be a JSON object"), 400, headers)
        errors = mail_errors(document)
        if errors:
            return json_response({"errors": errors}, 400, headers)
        mail = SentMail(message_id=secrets.token_urlsafe(16), body=document)
        self.sent.append(mail)
        return Response(status_code=202, headers={**headers, "X-Message-Id": mail.message_id})


def mail_errors(mail: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every reason SendGrid would reject this mail-send body, as ``{"field", "message"}``."""
    errors: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    templated = "template_id" in mail
    personalizations = mail.get("personalizations")
    if not isinstance(personalizations, list) or not 1 <= len(personalizations) <= MAX_RECIPIENTS:
        bad("personalizations", f"personalizations must be an array of 1 to {MAX_RECIPIENTS} objects")
        personalizations = []
    recipients = 0
    for i, personalization in enumerate(personalizations):
        if not isinstance(personalization, dict):
            bad(f"personalizations.{i}", "each personalization must be an object")
            continue
        if not personalization.get("to"):
            bad(f"personalizations.{i}.to", "the to array is required for all personalization objects")
        for kind in ("to", "cc", "bcc"):
            addresses = personalization.get(kind, [])
            if not isinstance(addresses, list):
                bad(f"personalizations.{i}.{kind}", f"{kind} must be an array of email objects")
                continue
            recipients += len(addresses)
            for j, address in enumerate(addresses):
                if not _is_email_object(address):
                    bad(f"personalizations.{i}.{kind}.{j}.email", "does not contain a valid address")
    if recipients > MAX_RECIPIENTS:
        bad("personalizations", f"at most {MAX_RECIPIENTS} recipients (to + cc + bcc) per request")
    if not _is_email_object(mail.get("from")):
        bad("from.email", "the from object must be provided with a valid email address")
    subject_everywhere = bool(personalizations) and all(
        isinstance(p, dict) and p.get("subject") for p in personalizations
    )
    if not templated and not subject_everywhere and not (isinstance(mail.get("subject"), str) and mail["subject"]):
        bad("subject", "the subject is required unless every personalization or a template has one")
    content = mail.get("content")
    if not templated and (not isinstance(content, list) or not content):
        bad("content", "content must be an array of at least one {type, value} unless a template_id is given")
    for i, part in enumerate(content if isinstance(content, list) else []):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str) or not part.get("value"):
            bad(f"content.{i}", "each content object needs a MIME type and a non-empty value")
    return errors


def _is_email_object(value: object) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        return False
    local, at, domain = value["email"].partition("@")
    return bool(local and at and "." in domain)


class SendGridSigner:
    """The signing side of SendGrid's signed Event Webhook, with a fresh P-256 key.

    Configure the receiver with ``public_key_b64``; sign each delivery with ``sign`` or build
    its two headers with ``headers``.
    """

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key_b64(self) -> str:
        """The verification key: base64 of the SubjectPublicKeyInfo DER."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, timestamp: str, body: bytes) -> str:
        """Base64 DER ECDSA-SHA256 signature over timestamp + body."""
        return base64.b64encode(self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()

    def headers(self, body: bytes, *, timestamp: str) -> dict[str, str]:
        """The headers of a signed delivery (``timestamp`` in unix seconds, as text)."""
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": self.sign(timestamp, body),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }


def sendgrid_event(
    event: str,
    email: str,
    message_id: str,
    *,
    timestamp: datetime,
    sg_event_id: str | None = None,
    category: str | Sequence[str] | None = None,
    custom_args: Mapping[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One Event Webhook event. ``message_id`` is the ``X-Message-Id`` of the send:
    ``sg_message_id`` is it plus SendGrid's ``.filter…`` suffix. The event's own fields get
    sample values that ``fields`` override; ``custom_args`` become top-level keys;
    ``sg_event_id`` defaults to a stable hash of (event, message id, email, timestamp)."""
    if event not in EVENT_FIELDS:
        raise ValueError(f"unknown SendGrid event {event!r}; expected one of {sorted(EVENT_FIELDS)}")
    moment = int(timestamp.timestamp())
    stable = f"{event}|{message_id}|{email}|{moment}".encode()
    payload: dict[str, Any] = {
        "email": email,
        "timestamp": moment,
        "event": event,
        "sg_event_id": sg_event_id
        or base64.urlsafe_b64encode(hashlib.sha256(stable).digest()[:16]).decode().rstrip("="),
        "sg_message_id": f"{message_id}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC1BE-9.0",
        "smtp-id": f"<{message_id}@ismtpd0001p1iad1.sendgrid.net>",
        **EVENT_FIELDS[event],
        **(custom_args or {}),
        **fields,
    }
    if category is not None:
        payload["category"] = category if isinstance(category, str) else list(category)
    return payload
