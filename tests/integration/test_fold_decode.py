"""The fold's decoder (projections/decode.py) against eventsourcing's own: the same domain events,
value for value and type for type, for every event type the application stores (SQLite and
PostgreSQL), and the same objects as ``JSONTranscoder.decode`` for custom transcodings and for
the JSON that orjson reads differently from ``json``."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import (DatetimeAsISO, DecimalAsStr, JSONTranscoder, Transcoding,
                                       TranscodingNotRegisteredError, UUIDAsHex)  # fmt: skip

from mcp_server.services import Services
from projections.decode import OrjsonDecodingTranscoder, fold_mapper
from tests.integration.test_envelope_fast_path import write_every_event_type
from tests.unit.test_envelope import DateAsISO, defined_event_types


def typed(value: Any) -> Any:
    """``value`` with the type of every part spelled out (1 == 1.0 == True, but not here)."""
    if isinstance(value, dict):
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])  # key order too
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, repr(value))


def test_fold_decoder_gives_eventsourcings_events_for_every_stored_event_type(services: Services) -> None:
    write_every_event_type(services)
    recorder, mapper = services.app.recorder, services.app.mapper
    fast = fold_mapper(mapper)
    assert isinstance(fast.transcoder, OrjsonDecodingTranscoder)
    names: set[str] = set()
    for notification in recorder.select_notifications(start=1, limit=10_000):
        mine, theirs = fast.to_domain_event(notification), mapper.to_domain_event(notification)
        assert type(mine) is type(theirs)
        assert typed(mine.__dict__) == typed(theirs.__dict__), notification.topic
        names.add(type(theirs).__qualname__)
    assert len(names) == len(defined_event_types())  # every type, each decoded the same
    # The engine folds with it, and the stored bytes are what the application wrote.
    assert isinstance(services.engine.mapper.transcoder, OrjsonDecodingTranscoder)
    assert fast.transcoder.encode({"x": AT}) == mapper.transcoder.encode({"x": AT})


class Pair(Transcoding):  # a transcoding whose data is itself an object holding transcoded values
    type = tuple
    name = "pair"

    def encode(self, obj: tuple[Any, Any]) -> dict[str, Any]:
        return {"first": obj[0], "second": obj[1]}

    def decode(self, data: dict[str, Any]) -> tuple[Any, Any]:
        return (data["first"], data["second"])


AT = datetime(2027, 1, 5, 8, 30, 15, 250000, tzinfo=timezone.utc)


def _transcoders() -> tuple[JSONTranscoder, OrjsonDecodingTranscoder]:
    reference = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), DateAsISO(), Pair()):
        reference.register(transcoding)
    return reference, OrjsonDecodingTranscoder(reference)


@pytest.mark.parametrize(
    "data",
    [
        # custom and default types, nested in objects and lists, inside a transcoded value's data
        {"id": UUID(int=7), "amount": Decimal("12.50"), "at": AT, "on": date(2027, 1, 5),
         "deep": [{"on": date(2026, 2, 2), "ids": [UUID(int=1), UUID(int=2)]}, [Decimal("-0.001")]],
         "pair": (date(2026, 1, 1), {"at": AT}), "text": "é ☃ 𝄞 \"quoted\" _type_", "none": None,
         "flags": [True, False], "n": [0, -1, 2**63 - 1, 2**64 - 1, -(2**63)], "x": [0.1, 1e300, -0.0, 1.0]},
        # objects that look like transcoded values but are not (3 keys, one key): left as they are
        {"a": {"_type_": "uuid_hex", "_data_": UUID(int=3).hex, "more": 1}, "b": {"_type_": "date_iso"}},
        [1, "two", None, {"x": []}],
        # shaped as most stored events (two instants), then with one more transcoded value or a
        # string "_type_" besides them
        {"timestamp": AT, "occurred_at": AT, "users": ["u1", "u2"], "features": {"a": 1}, "ids": ["1" * 30]},
        {"timestamp": AT, "occurred_at": AT, "deep": {"on": [date(2026, 2, 2)]}},
        {"timestamp": AT, "occurred_at": AT, "text": "_type_"},
    ],
)
def test_orjson_decode_equals_json_decode(data: Any) -> None:
    reference, fast = _transcoders()
    raw = reference.encode(data)
    assert typed(fast.decode(raw)) == typed(reference.decode(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"big": 123456789012345678901234567890, "neg": -9223372036854775809}',  # beyond 64 bits: exact ints
        b'{"deep": [[{"big": 18446744073709551616}]]}',
        b"123456789012345678901234567890",
        b'{"x": NaN, "y": Infinity, "z": 1e400}',  # json reads these, orjson refuses them
        b'{"s": "\\ud800"}',  # a lone surrogate
        b'{"k": {"\\u005ftype_": "date_iso", "_data_": "2027-01-05"}}',  # an escaped key is the same key
        b'{"a": 1, "a": {"_type_": "date_iso", "_data_": "2027-01-05"}}',  # a repeated key: the last wins
        "{\"s\": \"caf\u00e9\"}".encode(),
        # shaped as most stored events, with what the shortcut for them must leave to the full path
        b'{"timestamp": {"_type_": "date_iso", "_data_": "2027-01-05"}, "occurred_at": {"_type_": "date_iso", '
        b'"_data_": "2027-01-06"}, "n": [123456789012345678901234567890]}',
        b'{"timestamp": {"_type_": "date_iso", "_data_": "2027-01-05"}, "occurred_at": {"_type_": "date_iso", '
        b'"_data_": "2027-01-06"}, "k": {"\\u005ftype_": "date_iso", "_data_": "2027-01-05"}}',

    ],
)
def test_json_that_orjson_reads_differently_decodes_as_json_does(raw: bytes) -> None:
    reference, fast = _transcoders()
    assert typed(fast.decode(raw)) == typed(reference.decode(raw))


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"x": [{"_type_": "nobody", "_data_": 1}]}', TranscodingNotRegisteredError),
        (b'{"timestamp": {"_type_": "nobody", "_data_": "x"}, "occurred_at": {"_type_": "date_iso", "_data_": "2027-01-06"}}',
         TranscodingNotRegisteredError),
        (b'{"timestamp": {"_type_": "uuid_hex", "_data_": 5}, "occurred_at": {"_type_": "date_iso", "_data_": "2027-01-06"}}',
         AssertionError),  # UUIDAsHex asserts its data is a string
    ],
)
def test_what_eventsourcing_cannot_decode_fails_the_same_way(raw: bytes, error: type[Exception]) -> None:
    reference, fast = _transcoders()
    with pytest.raises(error):
        reference.decode(raw)
    with pytest.raises(error):
        fast.decode(raw)


def test_log_reader_reads_what_the_recorder_reads(services: Services) -> None:
    """read_after (binary tuples on PostgreSQL) == the recorder's select_notifications: the same
    notifications with values of the same types, for every start, stop and limit."""
    from projections.log_reader import read_after

    write_every_event_type(services)
    recorder = services.app.recorder
    head = services.app.last_position()
    assert head > 20
    for start, limit, stop in [(0, 10_000, None), (0, 7, None), (5, 3, None), (head - 2, 10, None), (head, 10, None),
                               (3, 100, 9), (3, 2, 9), (9, 5, 9), (0, 10_000, head)]:  # fmt: skip
        mine = read_after(recorder, start, limit, stop)
        theirs = recorder.select_notifications(start=start, limit=limit, stop=stop, inclusive_of_start=False)
        assert [typed(vars(n)) for n in mine] == [typed(vars(n)) for n in theirs], (start, limit, stop)
    assert [n.id for n in read_after(recorder, 0, 10_000)] == list(range(1, head + 1))


def _usage_notifications(services: Services) -> list[Any]:
    write_every_event_type(services)
    notifications = services.app.recorder.select_notifications(start=1, limit=10_000)
    usage = [n for n in notifications if n.topic.startswith("events.signals:UsageDay.")]
    assert {n.topic.rsplit(".", 1)[1] for n in usage} == {"Opened", "Counted"}
    return usage


def test_usage_events_are_decoded_typed_into_the_librarys_events(services: Services) -> None:
    """The usage events (most of a log) take msgspec's typed path, and it gives what the library
    gives, value for value, type for type and key for key in order; a fallback would hide a broken
    typed path, so it is called directly here."""
    from projections.decode import FoldMapper

    fold = services.engine.mapper
    assert isinstance(fold, FoldMapper)
    assert set(fold.typed) == {"events.signals:UsageDay.Opened", "events.signals:UsageDay.Counted"}
    for notification in _usage_notifications(services):
        cls, decoder = fold.typed[notification.topic]
        mine, theirs = fold._typed(cls, decoder, notification), services.app.mapper.to_domain_event(notification)
        assert type(mine) is type(theirs)
        assert typed(mine.__dict__) == typed(theirs.__dict__), notification.topic


@pytest.mark.parametrize(
    ("edit", "typed_path"),
    [
        (lambda s: s, True),  # as stored
        (lambda s: s.replace(b'"actor":', b'"class_version":2,"actor":'), False),  # a field the struct lacks
        (lambda s: s.replace(b'"actor":', b'"extra":[1],"actor":'), False),
        (lambda s: s.replace(b'"actor":"mixpanel",', b""), False),  # a field missing
        (lambda s: s.replace(b'"actor":"mixpanel"', b'"actor":null'), False),  # null for text
        (lambda s: s.replace(b'"sessions":3', b'"sessions":3.0'), False),  # a float for an integer
        (lambda s: s.replace(b'"sessions":3', b'"sessions":true'), False),
        (lambda s: s.replace(b'"sessions":3', b'"sessions":123456789012345678901234567890'), None),  # beyond 64 bits
        (lambda s: s.replace(b'"users":[', b'"users":["\\ud800",'), None),  # a lone surrogate
        (lambda s: s.replace(b'"users":[', b'"users":["caf\\u00e9 \\"q\\"",'), True),  # escapes
        (lambda s: s.replace(b'"users":[', b'"users":[1,'), False),
        (lambda s: s.replace(b'"features":{', b'"features":{"a":1,"a":2,'), None),  # a repeated key
        (lambda s: s.replace(b'"_type_":"datetime_iso"', b'"_type_":"date_iso"', 1), False),  # another transcoding
    ],
)
def test_a_usage_state_the_typed_path_does_not_read_exactly_is_the_librarys(
    services: Services, edit: Any, typed_path: bool | None
) -> None:
    """A stored Counted state edited in ways the typed path must not guess at: the event decoded
    is the library's (or both fail alike); ``typed_path`` says whether msgspec reads it itself
    (None: either way, as long as the result is the library's)."""
    from eventsourcing.persistence import Notification

    fold = services.engine.mapper
    counted = next(n for n in _usage_notifications(services) if n.topic.endswith("Counted"))
    assert b'"actor":"mixpanel"' in counted.state and b'"sessions":3' in counted.state, counted.state
    state = edit(counted.state)
    assert typed_path is True or state != counted.state
    notification = Notification(id=counted.id, originator_id=counted.originator_id,
                                originator_version=counted.originator_version, topic=counted.topic, state=state)  # fmt: skip
    try:
        theirs = services.app.mapper.to_domain_event(notification)
    except Exception as exc:  # noqa: BLE001 - then the fold must fail the same way
        with pytest.raises(type(exc)):
            fold.to_domain_event(notification)
        return
    assert typed(fold.to_domain_event(notification).__dict__) == typed(theirs.__dict__)
    if typed_path is not None:
        cls, decoder = fold.typed[counted.topic]
        try:
            fold._typed(cls, decoder, notification)
            took_it = True
        except Exception:  # noqa: BLE001
            took_it = False
        assert took_it is typed_path


def test_a_usage_class_changed_without_its_struct_is_never_decoded_typed() -> None:
    """The typed path is set up only for classes whose stored fields and version are its struct's:
    a field added to the class, or a new class version, without the struct changed, takes the
    library's way."""
    from eventsourcing.persistence import Mapper
    from eventsourcing.utils import get_topic

    import projections.decode as decode
    from events.signals import UsageDay

    class Counted(UsageDay.Counted):  # one field more
        extra: int

    class Counted2(UsageDay.Counted):
        class_version = 2

    assert decode.stored_fields(Counted) == decode.stored_fields(UsageDay.Counted) | {"extra"}
    transcoder = JSONTranscoder()
    transcoder.register(DatetimeAsISO())
    saved = dict(decode.TYPED_STATES)
    try:
        decode.TYPED_STATES[Counted] = decode.TYPED_STATES[Counted2] = decode.TYPED_STATES[UsageDay.Counted]
        fold = decode.fold_mapper(Mapper(transcoder=transcoder))
        assert get_topic(UsageDay.Counted) in fold.typed
        assert get_topic(Counted) not in fold.typed and get_topic(Counted2) not in fold.typed
    finally:
        decode.TYPED_STATES.clear()
        decode.TYPED_STATES.update(saved)
