"""The publisher's fast path (events/envelope.py, :class:`EnvelopeEncoder`) against the reference
path (domain event -> :func:`to_envelope` -> :func:`encode_envelope`): the same Kafka record,
byte for byte, for every event type the application stores, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from events.commands import CommandMeta
from events.domain import Customer, customer_id_for, event_id
from events.envelope import CustomerResolver, EnvelopeEncoder
from events.signals import Connector, EmailEvent, SurveyResponse, Ticket, UsageDay
from mcp_server.services import Services
from tests.unit.test_envelope import defined_event_types

AT = datetime(2027, 1, 5, 8, 30, 15, 250000, tzinfo=timezone.utc)
META = CommandMeta(actor="csm@example.com", source="mcp", source_id="call-9", occurred_at=AT)


def _vendor(**extra: object) -> dict[str, object]:
    return {"actor": "zendesk", "source": "zendesk", "source_id": "sync-1", "occurred_at": AT, **extra}


def write_every_event_type(svc: Services) -> None:
    """Every event type of the ``events`` package, through the commands where one exists, else
    through the aggregate's own methods (as the connectors record them), saved to the real log."""
    app = svc.app
    later = AT + timedelta(days=30)
    for key in ("acme", "globex"):
        app.register_customer(
            {"external_key": key, "name": f"{key.title()} Inc", "domain": f"{key}.example", "tier": "growth",
             "arr": 12000.5, "seats": 40, "contract_start": "2026-01-01", "contact_name": "Ada Lovelace",
             "contact_email": f"ada@{key}.example"}, META,
        )  # fmt: skip
    app.update_customer("acme", {"arr": 15000.0, "owner": "csm-7", "renewal_date": "2027-12-31"}, META)
    app.override_health("acme", {"band": "red", "score": 12.5, "reason": "exec sponsor left", "expires_at": later},
                        "csm@example.com", META)  # fmt: skip
    app.override_stage("acme", {"stage": "at_risk", "reason": "renewal in doubt", "expires_at": later},
                       "csm@example.com", META)  # fmt: skip
    customer: Customer = app.get_customer("acme")
    customer.remove_contact(contact_id=next(iter(customer.contacts)), **_vendor(source="mcp"))
    app.save(customer)
    app.churn_customer("globex", {"churned_on": "2027-01-04", "reason": "budget"}, META)

    app.configure_scorecard({"weights": {"support": 25}}, META)
    app.configure_scorecard({"key_features": ["Created Report", "Shared Dashboard"]}, META)
    app.define_milestone("First report", {"feature": "Created Report"}, META)
    app.define_milestone("First report", {"feature": "Created Report", "min_uses": 3}, META)
    app.delete_milestone("First report", META)
    big = {"field": "arr", "op": ">=", "value": 50000}
    app.define_segment("Big accounts", big, "worth a named CSM", META)
    app.update_segment("Big accounts", {"rules": {"field": "arr", "op": ">=", "value": 10000}}, META)
    app.delete_segment("Big accounts", META)
    app.define_segment("Big accounts", big, None, META)

    acme = str(customer_id_for("acme"))
    matched = Ticket(vendor="zendesk", vendor_id="501", customer_id=acme, match="zendesk_org_id=509974",
                     key_owner=acme, status="new", priority="high", subject=svc.codec.encrypt(customer_id_for("acme"), "Can't log in"),
                     requester=svc.codec.encrypt(customer_id_for("acme"), "Ada"), channel="email",
                     snapshot_at="2027-01-05T08:00:00Z", **_vendor())  # fmt: skip
    unmatched = Ticket(vendor="intercom", vendor_id="c-9", customer_id=None, match="unmatched: nobody.example",
                       key_owner=str(Ticket.create_id("intercom", "c-9")), status="open", priority=None, subject=None,
                       requester=None, channel=None, snapshot_at="2027-01-05T08:00:00Z", **_vendor())  # fmt: skip
    for ticket in (matched, unmatched):
        ticket.change(status="pending", priority=None, snapshot_at="2027-01-05T09:00:00Z", **_vendor())
        ticket.solve(solved_at="2027-01-05T10:00:00Z", **_vendor())
        ticket.reopen(status="open", **_vendor())
        ticket.rate(csat=0.75, raw_score="good", comment=None, **_vendor())
    day = UsageDay(customer_id=acme, account="", day="2027-01-04", **_vendor(actor="mixpanel", source="mixpanel"))
    day.count(events=42, sessions=3, users=["u1", "u2"], features={"Created Report": 2, "Exported CSV": 1},
              insert_ids=["i1", "i2"], **_vendor(actor="mixpanel", source="mixpanel"))  # fmt: skip
    survey = SurveyResponse(response_id="r-1", customer_id=acme, match="domain=acme.example", key_owner=acme, score=9,
                            comment=None, email=svc.codec.encrypt(customer_id_for("acme"), "ada@acme.example"),
                            **_vendor(actor="nps", source="nps"))  # fmt: skip
    email = EmailEvent(vendor_event_id="sg-1", customer_id=None, match="unmatched: x.example", key_owner=acme,
                       kind="bounce", email=None, message_id="m-1", url=None, reason="mailbox full",
                       **_vendor(actor="sendgrid", source="sendgrid"))  # fmt: skip
    connector = Connector(vendor="zendesk", **_vendor())
    connector.ingested(channel="sync", cursor="c-2", received=5, recorded=4, duplicates=1, unmatched=0, rejected=0,
                       **_vendor())  # fmt: skip
    connector.failed(channel="sync", error="HTTP 503 after 5 attempts", **_vendor())
    app.save(matched, unmatched, day, survey, email, connector)


def test_fast_path_gives_the_reference_bytes_for_every_stored_event_type(services: Services) -> None:
    write_every_event_type(services)
    recorder, mapper = services.app.recorder, services.app.mapper
    encode = EnvelopeEncoder(mapper, CustomerResolver(recorder, mapper))
    reference = EnvelopeEncoder(mapper, CustomerResolver(recorder, mapper))  # its own resolver cache
    assert encode.fast

    notifications = recorder.select_notifications(start=1, limit=10_000)
    types: set[str] = set()
    for notification in notifications:
        fast = encode.fast_record(notification)
        assert fast is not None, f"{notification.topic} took the reference path"
        assert fast == reference.reference(notification), notification.topic
        assert encode(notification) == fast
        assert fast[2] == str(event_id(mapper.to_domain_event(notification))).encode()
        types.add(json.loads(fast[1])["type"])
    assert types == defined_event_types()
