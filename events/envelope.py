"""The public, versioned JSON envelope of an event, as published to Kafka (DESIGN §9).

Layout (``schema_version`` 1; docs/events.md is the consumer's reference)::

    {"schema_version": 1, "event_id": "<uuid>", "type": "customer.contact_added",
     "customer_id": "<uuid>" | null, "occurred_at": "2027-01-31T09:00:00.000000Z",
     "recorded_at": "...Z", "position": 42,
     "meta": {"actor": "...", "source": "...", "source_id": "..."},
     "data": {...the event's own fields...}}

``customer_id`` is the customer the event is about: the aggregate id for Customer events, the
event's own ``customer_id`` field for aggregates that carry one (None: an unmatched vendor
record), else the ``customer_id`` of the aggregate's first event (``Ticket.Changed`` names no
customer, its ``Ticket.Opened`` does; see :class:`CustomerResolver`).

``data`` holds the event's fields minus the library's bookkeeping (``originator_id``,
``originator_version``, ``timestamp``, ``originator_topic``) and minus the provenance fields
every event carries (``actor``, ``source``, ``source_id`` go to ``meta``; ``occurred_at`` is
top level). Personal fields stay the ``pd1:`` tokens stored in the log: the envelope never
carries plain personal data, and crypto-shredding a customer also shreds what consumers hold.

Adding a field to ``data`` or ``meta`` is compatible; renaming or removing one, or changing
a meaning, requires ``schema_version`` 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import orjson

from events.domain import Customer, event_id, event_type

SCHEMA_VERSION = 1

_BOOKKEEPING = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
_META = ("actor", "source", "source_id")
_NOT_DATA = _BOOKKEEPING | frozenset(_META) | {"occurred_at"}
UNKNOWN: Any = object()
"""Returned by :func:`own_customer` for an event that does not say which customer it is about."""


def iso_utc(value: datetime) -> str:
    """Fixed-width ISO 8601 in UTC with microseconds and ``Z``; a naive datetime is taken as UTC."""
    text = value.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):  # the common case: stored times are UTC
        return text[:-6] + "Z"
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_PLAIN = (str, int, float, bool, type(None))


def to_json_value(value: Any) -> Any:
    """A JSON-compatible copy: datetimes as :func:`iso_utc`, dates ISO, UUIDs and Decimals as strings."""
    kind = type(value)
    if kind in _PLAIN:  # the common case first: the relay converts every field of every event
        return value
    if kind is dict or isinstance(value, Mapping):
        return {str(k): v if type(v) in _PLAIN else to_json_value(v) for k, v in value.items()}
    if kind is list or isinstance(value, (list, tuple, set, frozenset)):
        return [v if type(v) in _PLAIN else to_json_value(v) for v in value]
    if isinstance(value, datetime):  # before date: a datetime is a date
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    if isinstance(value, Enum):
        return to_json_value(value.value)
    if isinstance(value, (str, int, float)):  # subclasses (e.g. a str enum not caught above)
        return value
    raise TypeError(f"cannot put a {kind.__name__} into an event envelope")


def own_customer(domain_event: Any) -> Any:
    """The customer an event names itself: the aggregate id for Customer events, else its
    ``customer_id`` attribute when it has one (None for an unmatched vendor record), else
    :data:`UNKNOWN`."""
    if isinstance(domain_event, Customer.Event):
        return str(domain_event.originator_id)
    value = getattr(domain_event, "customer_id", UNKNOWN)
    if value is UNKNOWN or value is None:
        return value
    return str(value)


def customer_of(domain_event: Any) -> str | None:
    """:func:`own_customer`, None when the event does not say (see :class:`CustomerResolver`)."""
    value = own_customer(domain_event)
    return None if value is UNKNOWN else value


class CustomerResolver:
    """The customer of any event, also of those that do not name it (``Ticket.Changed``,
    ``UsageDay.Counted``): such an aggregate names its customer in its first event, which is read
    from the log once and remembered (the publisher sees most first events go by anyway)."""

    def __init__(self, recorder: Any, mapper: Any, max_size: int = 100_000) -> None:
        self.recorder = recorder
        self.mapper = mapper
        self.max_size = max_size
        self._by_aggregate: dict[Any, str | None] = {}

    def _remember(self, aggregate_id: Any, customer: str | None) -> None:
        if len(self._by_aggregate) >= self.max_size:
            self._by_aggregate.clear()  # bounded; a miss only costs one indexed read
        self._by_aggregate[aggregate_id] = customer

    def __call__(self, domain_event: Any) -> str | None:
        if isinstance(domain_event, Customer.Event):
            return str(domain_event.originator_id)  # the common case, nothing to remember
        own = own_customer(domain_event)
        aggregate_id = domain_event.originator_id
        if own is not UNKNOWN:
            self._remember(aggregate_id, own)
            return own
        customer = self._by_aggregate.get(aggregate_id, UNKNOWN)
        if customer is UNKNOWN:
            first = self.recorder.select_events(aggregate_id, limit=1)
            named = own_customer(self.mapper.to_domain_event(first[0])) if first else UNKNOWN
            customer = None if named is UNKNOWN else named
            self._remember(aggregate_id, customer)
        return customer


_TYPE_NAMES: dict[type, str] = {}


def _type_name(kind: type, domain_event: Any) -> str:
    name = _TYPE_NAMES.get(kind)
    if name is None:
        name = _TYPE_NAMES[kind] = event_type(domain_event)
    return name


def to_envelope(
    notification: Any, domain_event: Any, resolve: Callable[[Any], str | None] = customer_of
) -> dict[str, Any]:
    """The envelope of one stored event (``notification`` gives the log position); ``resolve``
    finds its customer (the publisher passes a :class:`CustomerResolver`)."""
    fields = domain_event.__dict__
    data = {k: v if type(v) in _PLAIN else to_json_value(v) for k, v in fields.items() if k not in _NOT_DATA}
    occurred_at = fields.get("occurred_at") or domain_event.timestamp
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": str(event_id(domain_event)),
        "type": _type_name(type(domain_event), domain_event),
        "customer_id": resolve(domain_event),
        "occurred_at": iso_utc(occurred_at),
        "recorded_at": iso_utc(domain_event.timestamp),
        "position": int(notification.id),
        "meta": {k: v if type(v := fields.get(k)) in _PLAIN else to_json_value(v) for k in _META},
        "data": data,
    }


def envelope_key(envelope: Mapping[str, Any]) -> bytes:
    """The Kafka message key: the customer id (order per customer), else the event id."""
    return str(envelope.get("customer_id") or envelope["event_id"]).encode()


def encode_envelope(envelope: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (the published message value). orjson: the publisher's hot path,
    several times faster than json for the same bytes (compact separators, UTF-8 as is)."""
    return orjson.dumps(envelope)
