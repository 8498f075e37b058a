"""SendGrid Event Webhook: deliveries, opens, clicks and bounces of e-mail we sent.

- ``translate(event)`` -> EmailActivity (dedupe on ``sg_event_id``). An ``open`` that SendGrid
  flags ``sg_machine_open: true`` was made by Apple Mail Privacy Protection, which fetches the
  tracking pixel of every message it receives whether anyone reads it or not: it is recorded as
  kind ``machine_open``, so it never passes for a person's engagement (the health model's
  engagement component and the overview's opens count only ``open`` and ``click``).
- ``verify_webhook``: ECDSA P-256 / SHA-256 over ``timestamp + raw body``; the public key is
  base64 SubjectPublicKeyInfo DER; timestamps older than 5 minutes are refused (replay).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from connectors.common import parse_time, require, text_or_none
from connectors.matching import CustomerDirectory, match
from events.errors import InvalidInputError
from events.ingest import EmailActivity, Match
from events.signals import MACHINE_OPEN

VENDOR = "sendgrid"
SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
KINDS = frozenset({"processed", "deferred", "delivered", "open", "click", "bounce", "dropped", "spamreport",
                   "unsubscribe", "group_unsubscribe", "group_resubscribe"})  # fmt: skip
REPLAY_WINDOW_S = 300


def translate(event: Any) -> EmailActivity:
    if not isinstance(event, dict):
        raise InvalidInputError("event", "expected a JSON object")
    kind = str(require(event, "event", "event"))
    if kind not in KINDS:
        raise InvalidInputError("event.event", f"unknown kind {kind[:30]!r}; expected one of {', '.join(sorted(KINDS))}")
    message = event.get("sg_message_id")
    if kind == "open" and event.get("sg_machine_open") in (True, "true"):
        kind = MACHINE_OPEN
    return EmailActivity(
        vendor_event_id=str(require(event, "sg_event_id", "event")),
        kind=kind,
        email=text_or_none(event.get("email"), 320),
        message_id=str(message).split(".", 1)[0] if message else None,  # sg_message_id = X-Message-Id + ".filter…"
        url=text_or_none(event.get("url"), 2000),
        reason=text_or_none(event.get("reason"), 500),
        at=parse_time(require(event, "timestamp", "event"), "event.timestamp"),
    )


def file_events(data: Any) -> Iterable[Any]:
    if not isinstance(data, list):
        raise InvalidInputError("file", "expected a JSON array of event-webhook events")
    return data


def match_recipient(directory: CustomerDirectory, activity: EmailActivity) -> Match:
    return match(directory, email=activity.email)


def verify_webhook(public_key_b64: str, headers: dict[str, str], body: bytes, *, now: float | None = None) -> bool:
    signature, stamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not public_key_b64 or not signature or not stamp or not (stamp.isascii() and stamp.isdigit()):
        return False
    if abs((now if now is not None else time.time()) - int(stamp)) > REPLAY_WINDOW_S:
        return False
    try:
        key = load_der_public_key(base64.b64decode(public_key_b64))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(base64.b64decode(signature), stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
