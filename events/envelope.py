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
from hashlib import sha1
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder
from eventsourcing.utils import resolve_topic

from events.domain import Customer, event_id, event_type_name

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
        return self.given(domain_event.originator_id, own_customer(domain_event))

    def given(self, aggregate_id: Any, own: Any) -> str | None:
        """The customer of an event of ``aggregate_id`` (not a Customer) that names ``own``
        (:func:`own_customer`; :data:`UNKNOWN` when it names none)."""
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
        "type": event_type_name(type(domain_event)),
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


# --------------------------------------------------------------------- the publisher's fast path
Record = tuple[bytes, bytes, bytes]
"""A published Kafka record: (key, value, ``event_id`` header)."""

_TRANSCODED = b'"_type_"'
# orjson reads integers beyond 64 bits as floats where json keeps them exact: a run of 19 digits
# sends the event to the reference path (digits -> "0", anything else -> " ", then one search).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_NUMBER = b"0" * 19


def _datetime_value(data: Any) -> str:
    """A stored ``datetime_iso`` as :func:`iso_utc` gives the decoded datetime."""
    if len(data) == 32 and data[10] == "T" and data.endswith("+00:00"):  # UTC with microseconds
        return data[:26] + "Z"
    return iso_utc(datetime.fromisoformat(data))


_FROM_TRANSCODING: dict[str, Callable[[str], str]] = {
    # the transcodings eventsourcing registers by default, each to what to_json_value makes of it
    "datetime_iso": _datetime_value,
    "uuid_hex": lambda data: str(UUID(data)),
    "decimal_str": lambda data: str(Decimal(data)),
}


class _NotFast(Exception):
    """This stored event needs the mapper: the encoder takes the reference path."""


def _from_stored(value: Any) -> Any:
    """A value of the stored JSON as :func:`to_json_value` gives it once the transcoder decoded it."""
    kind = type(value)
    if kind is dict:
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            data = value["_data_"]
            convert = _FROM_TRANSCODING.get(value["_type_"])
            if convert is None or type(data) is not str:
                raise _NotFast
            return convert(data)
        return {k: _from_stored(v) for k, v in value.items()}
    if kind is list:
        return [_from_stored(v) for v in value]
    return value


def _stored_time(value: Any) -> str:
    if type(value) is dict and len(value) == 2 and value.get("_type_") == "datetime_iso":
        data = value["_data_"]
        if type(data) is str:
            return _datetime_value(data)
    raise _NotFast


_UUID5_KEEP = ~(0xC000 << 48) & ~(0xF000 << 64)
_UUID5_SET = 0x8000 << 48 | 5 << 76


def fast_event_id(originator_id: UUID, version: int) -> str:
    """``str(event_id(...))`` (uuid5 of the aggregate id and version) without two UUID objects."""
    n = int.from_bytes(sha1(originator_id.bytes + str(version).encode()).digest()[:16], "big")
    return hex_uuid_text("%032x" % (n & _UUID5_KEEP | _UUID5_SET))  # the bits uuid.UUID(version=5) sets


def hex_uuid_text(h: str) -> str:
    """A UUID's canonical text (``str(UUID(hex=h))``) from its 32 lower-case hex digits."""
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class EnvelopeEncoder:
    """Stored event (a notification of the log) -> its Kafka record, read straight from the
    stored JSON: the same bytes as ``encode_envelope(to_envelope(n, mapper.to_domain_event(n),
    resolver))`` without building the domain event, decoding its values into Python objects and
    converting them back (the publisher's hot path: about a third of its time per event).

    The stored state is the JSON object of the event's fields written by eventsourcing's
    ``JSONTranscoder`` (``{"_type_": name, "_data_": ...}`` for datetimes, UUIDs, Decimals): it is
    parsed once with orjson and only the envelope's own parts are converted. Whatever this path
    does not know takes the reference path instead, event by event: a mapper with a cipher or
    compressor, a transcoding other than eventsourcing's defaults, an upcast event class, a
    class-level ``customer_id``, an integer beyond 64 bits, JSON that orjson refuses (NaN).
    """

    def __init__(self, mapper: Any, resolver: CustomerResolver) -> None:
        self.mapper = mapper
        self.resolver = resolver
        transcoder = getattr(mapper, "transcoder", None)
        self.fast = (
            getattr(mapper, "cipher", None) is None
            and getattr(mapper, "compressor", None) is None
            and type(transcoder) is JSONTranscoder
            and all(name in _FROM_TRANSCODING for name in transcoder.names)
        )
        self._kinds: dict[str, tuple[str, bool] | None] = {}  # topic -> (type, is a Customer event)

    def _kind(self, topic: str) -> tuple[str, bool] | None:
        """(public type name, Customer event?) of an event class the fast path handles, else None."""
        if topic not in self._kinds:
            cls = resolve_topic(topic)
            plain = getattr(cls, "class_version", 1) == 1 and not hasattr(cls, "customer_id")
            self._kinds[topic] = (event_type_name(cls), issubclass(cls, Customer.Event)) if plain else None
        return self._kinds[topic]

    def reference(self, notification: Any) -> Record:
        """The record through the domain event (:func:`to_envelope`): the contract's definition."""
        envelope = to_envelope(notification, self.mapper.to_domain_event(notification), self.resolver)
        return envelope_key(envelope), encode_envelope(envelope), envelope["event_id"].encode()

    def __call__(self, notification: Any) -> Record:
        record = self.fast_record(notification)
        return self.reference(notification) if record is None else record

    def fast_record(self, notification: Any) -> Record | None:
        """The record read straight from the stored JSON, or None when this event needs the
        reference path (see the class)."""
        kind = self._kinds.get(notification.topic, UNKNOWN)
        if kind is UNKNOWN:
            kind = self._kind(notification.topic)
        originator_id = notification.originator_id
        raw = notification.state
        if kind is None or not self.fast or type(originator_id) is not UUID or _LONG_NUMBER in raw.translate(_DIGITS_ONLY):
            return None
        try:
            state = orjson.loads(raw)
            recorded_at = _stored_time(state["timestamp"])
            occurred = state.get("occurred_at")
            occurred_at = _stored_time(occurred) if occurred else recorded_at
            if "class_version" in state:
                raise _NotFast
            actor, source, source_id = state.get("actor"), state.get("source"), state.get("source_id")
            if type(actor) is str and type(source) is str and type(source_id) is str:  # the common case
                meta = {"actor": actor, "source": source, "source_id": source_id}
            else:
                meta = {k: _from_stored(state.get(k)) for k in _META}
            data = {k: v for k, v in state.items() if k not in _NOT_DATA}
            # "_type_" appears in JSON only as a key or a value of its own (quotes inside strings
            # are escaped): beyond the two times above, a transcoded value may be in the data.
            if raw.count(_TRANSCODED) > (2 if occurred else 1):
                data = _from_stored(data)
        except (_NotFast, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        name, is_customer = kind
        event_id = fast_event_id(originator_id, notification.originator_version)
        if is_customer:
            customer: str | None = str(originator_id)
        else:
            own = data.get("customer_id", UNKNOWN)
            if own is not UNKNOWN and own is not None and type(own) is not str:
                return None  # str(value) of something else: the reference path says what it is
            customer = self.resolver.given(originator_id, own)
        value = orjson.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "event_id": event_id,
                "type": name,
                "customer_id": customer,
                "occurred_at": occurred_at,
                "recorded_at": recorded_at,
                "position": int(notification.id),
                "meta": meta,
                "data": data,
            }
        )
        return (customer or event_id).encode(), value, event_id.encode()
