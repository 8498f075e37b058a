"""Local HTTP servers that speak the vendors' documented contracts (../shared/VENDORS.md), for the
connector tests, and the helpers that sign and build the vendors' webhook deliveries.

Each fake is a context manager that serves a Starlette app on a free 127.0.0.1 port and yields
itself: ``base_url``, its data (a list the test may append to between polls), ``requests`` (the
log of every request: method, path, query, headers, body) and ``fail_next(...)`` (faults queued
for the next requests to a path: an error status with headers, a malformed 200, a delay)::

    with ZendeskFake(tickets=[zendesk_ticket(1, 509974)], page_size=50) as zendesk:
        zendesk.fail_next(status=429, headers={"Retry-After": "1"})
        ...

One module per vendor; ``server`` holds what they share (``serve_asgi`` runs any ASGI app).
"""

from tests.support.vendors.intercom import (
    IntercomFake,
    intercom_contact_id,
    intercom_conversation,
    intercom_notification,
    intercom_signature,
)
from tests.support.vendors.mixpanel import MixpanelFake, mixpanel_event
from tests.support.vendors.sendgrid import SendGridFake, SendGridSigner, SentMail, sendgrid_event
from tests.support.vendors.server import Fault, RecordedRequest, VendorFake, serve_asgi
from tests.support.vendors.zendesk import (
    ZendeskFake,
    zendesk_signature,
    zendesk_ticket,
    zendesk_ticket_event,
    zendesk_time,
    zendesk_webhook_headers,
)

__all__ = [
    "Fault",
    "IntercomFake",
    "MixpanelFake",
    "RecordedRequest",
    "SendGridFake",
    "SendGridSigner",
    "SentMail",
    "VendorFake",
    "ZendeskFake",
    "intercom_contact_id",
    "intercom_conversation",
    "intercom_notification",
    "intercom_signature",
    "mixpanel_event",
    "sendgrid_event",
    "serve_asgi",
    "zendesk_signature",
    "zendesk_ticket",
    "zendesk_ticket_event",
    "zendesk_time",
    "zendesk_webhook_headers",
]
