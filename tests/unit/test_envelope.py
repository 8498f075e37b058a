"""The published envelope (events/envelope.py, docs/events.md): layout, ids, JSON values."""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import (DatetimeAsISO, DecimalAsStr, JSONTranscoder, Mapper, Transcoding,
                                       UUIDAsHex)  # fmt: skip
from eventsourcing.persistence import Notification as StoredNotification

from events.domain import Customer, DomainEvent, customer_id_for, event_id, event_type
from events.envelope import (CustomerResolver, EnvelopeEncoder, encode_envelope, envelope_key, fast_event_id, iso_utc,
                             to_envelope, to_json_value)  # fmt: skip

WHEN = datetime(2027, 1, 31, 9, 30, tzinfo=timezone.utc)


@dataclass
class Notification:
    id: int


class Ticket:  # a later aggregate's event: it names its customer (or None when unmatched)
    class Opened:
        def __init__(self, customer_id: UUID | None) -> None:
            self.originator_id = uuid4()
            self.originator_version = 1
            self.timestamp = WHEN + timedelta(seconds=5)
            self.actor = "zendesk"
            self.source = "zendesk"
            self.source_id = "ticket-42"
            self.occurred_at = WHEN
            self.customer_id = customer_id
            self.subject = "pd1:token"
            self.opened_on = date(2027, 1, 31)
            self.tags = ("billing", "urgent")
            self.amount = Decimal("12.50")


def registered() -> Any:
    customer = Customer(
        external_key="acme", profile={"name": "Acme", "renewal_date": "2027-06-30"},
        actor="csm@example.com", source="mcp", source_id="call-1", occurred_at=WHEN,
    )  # fmt: skip
    (event,) = customer.collect_events()
    return event


def test_customer_event_envelope_layout() -> None:
    event = registered()
    envelope = to_envelope(Notification(7), event)
    assert envelope == {
        "schema_version": 1,
        "event_id": str(event_id(event)),
        "type": "customer.registered",
        "customer_id": str(customer_id_for("acme")),
        "occurred_at": "2027-01-31T09:30:00.000000Z",
        "recorded_at": iso_utc(event.timestamp),
        "position": 7,
        "meta": {"actor": "csm@example.com", "source": "mcp", "source_id": "call-1"},
        "data": {"external_key": "acme", "profile": {"name": "Acme", "renewal_date": "2027-06-30"}},
    }
    assert envelope_key(envelope) == str(customer_id_for("acme")).encode()
    assert json.loads(encode_envelope(envelope)) == envelope


def test_events_of_other_aggregates_use_their_customer_id_attribute() -> None:
    customer = uuid4()
    envelope = to_envelope(Notification(3), Ticket.Opened(customer))
    assert envelope["type"] == "ticket.opened"
    assert envelope["customer_id"] == str(customer)
    assert envelope["data"] == {
        "customer_id": str(customer), "subject": "pd1:token", "opened_on": "2027-01-31",
        "tags": ["billing", "urgent"], "amount": "12.50",
    }  # fmt: skip
    json.loads(encode_envelope(envelope))


def test_unmatched_record_has_no_customer_and_is_keyed_by_event_id() -> None:
    event = Ticket.Opened(None)
    envelope = to_envelope(Notification(4), event)
    assert envelope["customer_id"] is None
    assert envelope_key(envelope) == str(event_id(event)).encode()


class Ticket2:  # an event that does not repeat its aggregate's customer (like Ticket.Changed)
    class Changed:
        def __init__(self, aggregate_id: UUID) -> None:
            self.originator_id = aggregate_id
            self.originator_version = 2
            self.timestamp = WHEN
            self.status = "open"


class FirstEvents:
    """A recorder and mapper whose log holds one first event per aggregate; counts the reads."""

    def __init__(self, first: dict[UUID, Any]) -> None:
        self.first = first
        self.reads = 0

    def select_events(self, aggregate_id: UUID, limit: int) -> list[Any]:
        self.reads += 1
        return [self.first[aggregate_id]] if aggregate_id in self.first else []

    def to_domain_event(self, stored: Any) -> Any:
        return stored


def test_resolver_finds_the_customer_in_the_aggregates_first_event_once() -> None:
    customer = uuid4()
    matched, unmatched = Ticket.Opened(customer), Ticket.Opened(None)
    log = FirstEvents({matched.originator_id: matched, unmatched.originator_id: unmatched})
    resolve = CustomerResolver(log, log)
    for _ in range(3):
        assert resolve(Ticket2.Changed(matched.originator_id)) == str(customer)
        assert resolve(Ticket2.Changed(unmatched.originator_id)) is None
    assert log.reads == 2  # one read per aggregate, then remembered
    assert resolve(registered()) == str(customer_id_for("acme"))
    assert resolve(Ticket2.Changed(uuid4())) is None  # no first event: no customer
    seen_opened = CustomerResolver(log, log)
    assert seen_opened(matched) == str(customer)  # a first event going by is remembered...
    assert seen_opened(Ticket2.Changed(matched.originator_id)) == str(customer)
    assert log.reads == 3  # ...so its later events need no read (the 3rd read was the unknown one)


def test_times_are_fixed_width_utc() -> None:
    assert iso_utc(datetime(2027, 1, 31, 11, 0, tzinfo=timezone(timedelta(hours=2)))) == "2027-01-31T09:00:00.000000Z"
    assert iso_utc(datetime(2027, 1, 31, 9, 0)) == "2027-01-31T09:00:00.000000Z"  # naive is taken as UTC
    assert datetime.fromisoformat(iso_utc(WHEN)) == WHEN


def test_values_that_json_cannot_carry_are_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        to_json_value({"x": object()})


def defined_event_types() -> set[str]:
    """Every concrete event type of the ``events`` package, as published."""
    import events

    for info in pkgutil.iter_modules(events.__path__):
        importlib.import_module(f"events.{info.name}")
    found: set[str] = set()
    pending: list[type] = [DomainEvent]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # eventsourcing gives every aggregate a ``Created`` class; ours record their own (Registered, ...)
        if cls.__module__.startswith("events.") and cls.__name__ not in ("Event", "DomainEvent", "Created"):
            found.add(event_type(object.__new__(cls)))
    return found


def test_docs_list_every_published_event_type() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    missing = sorted(t for t in defined_event_types() if f"`{t}`" not in doc)
    assert not missing, f"docs/events.md does not describe: {', '.join(missing)}"


# ------------------------------------------------------------- the publisher's fast path
def json_mapper(*extra: Transcoding) -> Mapper[UUID]:
    """The mapper eventsourcing builds for the application (JSON, its default transcodings)."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), *extra):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


def stored(mapper: Mapper[UUID], fields: dict[str, Any], topic: str = "events.signals:Ticket.Opened",
           aggregate: UUID | None = None, version: int = 1) -> StoredNotification:  # fmt: skip
    """A notification as the recorder returns it, its state written by the mapper's transcoder."""
    state = mapper.transcoder.encode({"timestamp": WHEN + timedelta(seconds=5), "actor": "zendesk",
                                      "source": "zendesk", "source_id": "t-1", "occurred_at": WHEN, **fields})  # fmt: skip
    return StoredNotification(originator_id=aggregate or uuid4(), originator_version=version, topic=topic, state=state,
                              id=17)


def encoders(mapper: Mapper[UUID]) -> tuple[EnvelopeEncoder, EnvelopeEncoder]:
    """Two encoders with their own resolver caches (one for the fast path, one for the reference)."""
    log = FirstEvents({})
    return EnvelopeEncoder(mapper, CustomerResolver(log, mapper)), EnvelopeEncoder(mapper, CustomerResolver(log, mapper))


@pytest.mark.parametrize(
    "fields",
    [
        {"customer_id": "6194c2da-6ca1-5c1c-8d48-5d87a6df628b", "subject": "pd1:abc", "priority": None, "csat": 0.75},
        {"customer_id": UUID("6194c2da-6ca1-5c1c-8d48-5d87a6df628b"), "amount": Decimal("12.50")},  # transcoded id
        {"customer_id": None, "when": datetime(2027, 1, 31, 11, 0, tzinfo=timezone(timedelta(hours=2)))},
        {"customer_id": None, "naive": datetime(2027, 1, 31, 9, 0), "whole_second": WHEN.replace(microsecond=0)},
        {"customer_id": None, "nested": {"ids": [uuid4(), {"at": WHEN, "n": [1, 2.5, True, None]}], "_type_": "x",
                                         "k": "v"}, "big": 10**18 - 1, "neg": -(10**18 - 1)},  # fmt: skip
        {"customer_id": None, "text": 'quote " "_type_" back\\slash é 😀 \u2028', "empty": {}, "list": []},
        {"customer_id": None, "source_id": uuid4(), "actor": None},  # meta that is not all strings
        {"customer_id": None, "occurred_at": None},  # no occurred_at: recorded_at stands in
        {"customer_id": None, "occurred_at": WHEN.replace(microsecond=0, tzinfo=None)},
    ],
)
def test_fast_path_gives_the_reference_bytes(fields: dict[str, Any]) -> None:
    mapper = json_mapper()
    fast, reference = encoders(mapper)
    notification = stored(mapper, fields)
    record = fast.fast_record(notification)
    assert record is not None
    assert record == reference.reference(notification)
    assert json.loads(record[1])["position"] == 17


def test_fast_path_resolves_customers_as_the_reference_does() -> None:
    mapper = json_mapper()
    fast, reference = encoders(mapper)
    ticket, customer = uuid4(), str(uuid4())
    opened = stored(mapper, {"customer_id": customer}, aggregate=ticket)
    changed = stored(mapper, {"status": "open"}, topic="events.signals:Ticket.Changed", aggregate=ticket, version=2)
    orphan = stored(mapper, {"status": "open"}, topic="events.signals:Ticket.Changed")  # no first event in the log
    registered_event = registered()
    customer_event = stored(mapper, {"external_key": "acme", "profile": {"name": "Acme"}},
                            topic="events.domain:Customer.Registered", aggregate=registered_event.originator_id)  # fmt: skip
    for notification in (opened, changed, orphan, customer_event):
        record = fast.fast_record(notification)
        assert record is not None and record == reference.reference(notification)
    assert json.loads(fast(changed)[1])["customer_id"] == customer
    assert fast(changed)[0] == customer.encode()  # keyed by the customer its first event named
    assert json.loads(fast(orphan)[1])["customer_id"] is None
    assert fast(customer_event)[0] == str(customer_id_for("acme")).encode()


def test_values_orjson_reads_differently_take_the_reference_path() -> None:
    mapper = json_mapper()
    fast, reference = encoders(mapper)
    nan = stored(mapper, {"customer_id": None, "score": float("nan")})  # json writes NaN, orjson refuses it
    assert fast.fast_record(nan) is None
    assert fast(nan) == reference.reference(nan)
    long = stored(mapper, {"customer_id": None, "count": 2**63 - 1})  # 19 digits: the reference path decides
    assert fast.fast_record(long) is None
    assert fast(long) == reference.reference(long)
    huge = stored(mapper, {"customer_id": None, "count": 2**64 + 1})  # orjson would read a float
    assert fast.fast_record(huge) is None
    with pytest.raises(TypeError):  # as before: such a value cannot be published at all
        fast(huge)
    named_otherwise = stored(mapper, {"customer_id": 42})  # own_customer gives str(42): the reference decides
    assert fast.fast_record(named_otherwise) is None
    assert json.loads(fast(named_otherwise)[1])["customer_id"] == "42"


class DateAsISO(Transcoding):
    """A transcoding beyond eventsourcing's defaults."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


def test_an_unknown_transcoding_turns_the_fast_path_off() -> None:
    mapper = json_mapper(DateAsISO())
    fast, reference = encoders(mapper)
    assert not fast.fast
    notification = stored(mapper, {"customer_id": None, "day": date(2027, 1, 31)})
    assert fast.fast_record(notification) is None
    assert fast(notification) == reference.reference(notification)


def test_fast_event_id_is_the_domain_event_id() -> None:
    for _ in range(500):
        aggregate = uuid4()
        for version in (1, 2, 9, 10, 1234567):
            event = Ticket2.Changed(aggregate)
            event.originator_version = version
            assert fast_event_id(aggregate, version) == str(event_id(event))
