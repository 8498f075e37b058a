"""Decoding stored events for the fold, with orjson instead of ``json`` + ``object_hook``.

A rebuild decodes every stored event; eventsourcing's :class:`JSONTranscoder` parses the stored
JSON with Python's ``json`` module and calls its ``object_hook`` (in Python) for every JSON
object. The usage events carry every raw event's ``$insert_id``, so that is most of a rebuild's
decoding time. :func:`fold_mapper` gives a mapper that decodes the same stored bytes into the same
objects: orjson parses them (in C), then one pass applies the transcoder's own registered
transcodings to the objects ``{"_type_": name, "_data_": ...}``, innermost first, exactly as the
``object_hook`` does. Everything else is the mapper's own code (cipher, compressor, id
conversion, upcasting), and writes do not change. Whatever orjson reads differently from
``json`` takes the reference decode instead: JSON orjson refuses (NaN, Infinity, lone
surrogates) and integers beyond 64 bits (orjson makes them floats: any float of that size sends
the event back to ``json``).

The usage events, most of a log, are decoded by :class:`FoldMapper` with msgspec straight into
their fields' types (a struct per event class, checked against the class's fields): the same
objects again, without the walk over the parsed JSON, and whatever that path does not read
exactly goes the way above.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import msgspec
import orjson
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Transcoder, Transcoding, find_id_convertor
from eventsourcing.utils import get_topic

from events.signals import UsageDay


_INT_LIMIT = 2.0**63  # orjson reads integers beyond 64 bits as floats at least this large
_SCALARS = frozenset((str, int, bool, type(None)))  # values that need nothing (floats need the check)


class _Reference(Exception):
    """This value needs the reference decode."""


def _hook(value: Any, names: dict[str, Transcoding]) -> Any:
    """``value`` (a list or dict from orjson) with the transcoded objects decoded, innermost first."""
    if type(value) is dict:
        for key, item in value.items():
            kind = type(item)
            if kind is dict:
                if len(item) == 2 and "_type_" in item and "_data_" in item and type(item["_data_"]) is str:
                    # the common case (a datetime, a UUID...) without a call for the object itself
                    transcoding = names.get(item["_type_"])
                    if transcoding is None:
                        raise _Reference
                    value[key] = transcoding.decode(item["_data_"])
                elif not _SCALARS.issuperset(map(type, item.values())) or "_type_" in item:
                    value[key] = _hook(item, names)
            elif kind is list:
                value[key] = _hook(item, names)
            elif kind is float and not -_INT_LIMIT < item < _INT_LIMIT:
                raise _Reference
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            transcoding = names.get(value["_type_"])
            if transcoding is None:
                raise _Reference  # the reference decode raises eventsourcing's own error
            return transcoding.decode(value["_data_"])
        return value
    if _SCALARS.issuperset(map(type, value)):
        return value  # e.g. a list of strings (insert ids): nothing to decode, checked in C
    for index, item in enumerate(value):
        kind = type(item)
        if kind is dict or kind is list:
            value[index] = _hook(item, names)
        elif kind is float and not -_INT_LIMIT < item < _INT_LIMIT:
            raise _Reference
    return value


class OrjsonDecodingTranscoder(Transcoder):
    """A :class:`JSONTranscoder`'s decode through orjson (same objects); encode is the original's."""

    def __init__(self, reference: JSONTranscoder) -> None:
        self.reference = reference

    def register(self, transcoding: Transcoding) -> None:
        self.reference.register(transcoding)

    def encode(self, obj: Any) -> bytes:
        return self.reference.encode(obj)

    def decode(self, data: bytes) -> Any:
        try:
            value = orjson.loads(data)
            kind = type(value)
            if kind is dict or kind is list:
                return _hook(value, self.reference.names)
            if kind is float and not -_INT_LIMIT < value < _INT_LIMIT:
                raise _Reference
            return value
        except Exception:  # noqa: BLE001 - _Reference, or JSON orjson refuses: the reference decides (and raises)
            return self.reference.decode(data)


class _Stamp(msgspec.Struct, forbid_unknown_fields=True):
    """A datetime as the transcoder stores it: ``{"_type_": "datetime_iso", "_data_": "..."}``."""

    type: str = msgspec.field(name="_type_")
    data: str = msgspec.field(name="_data_")


class _UsageOpened(msgspec.Struct, forbid_unknown_fields=True):
    """The stored state of :class:`UsageDay.Opened`, field for field, in the order it is written."""

    timestamp: _Stamp
    originator_topic: str
    actor: str
    source: str
    source_id: str
    occurred_at: _Stamp
    customer_id: str | None
    account: str
    day: str


class _UsageCounted(msgspec.Struct, forbid_unknown_fields=True):
    """The stored state of :class:`UsageDay.Counted`, field for field, in the order it is written."""

    timestamp: _Stamp
    actor: str
    source: str
    source_id: str
    occurred_at: _Stamp
    events: int
    sessions: int
    users: list[str]
    features: dict[str, int]
    insert_ids: list[str]


# The usage events are most of a log (a rebuild of the benchmark book decodes 136,000 of its
# 149,000 events): their states are decoded straight into their fields' types by msgspec.
TYPED_STATES: dict[type, type[msgspec.Struct]] = {UsageDay.Opened: _UsageOpened, UsageDay.Counted: _UsageCounted}
_TIMES = ("timestamp", "occurred_at")


def stored_fields(cls: type) -> set[str]:
    """The names of the fields an event of ``cls`` stores (its dataclass fields but the originator's
    id and version, which are columns; a created event also stores its aggregate's topic)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"originator_id", "originator_version"}
    return names | {"originator_topic"} if issubclass(cls, Aggregate.Created) else names


class FoldMapper:
    """``mapper`` (with :class:`OrjsonDecodingTranscoder`) whose ``to_domain_event`` decodes the
    events of :data:`TYPED_STATES` with msgspec into the same objects: the state checked against
    the event's fields and their types as it is parsed (no walk over the parsed JSON), the two
    datetimes through the transcoder's own ``datetime_iso`` transcoding, the originator's id and
    version added last, as the library does. Anything else takes ``mapper``'s way, and so does
    any state this path does not read exactly: a field more or less (a ``class_version``, a
    field added to the class), a value of another type (a float for an integer, a null for
    text), another datetime transcoding, JSON msgspec refuses. A class whose fields or version
    differ from its struct's (a class changed without its struct) is never decoded here."""

    def __init__(self, mapper: Any, stamps: Transcoding) -> None:
        self.mapper = mapper  # its other attributes (the transcoder...) are read through __getattr__
        self._stamps = stamps
        self.typed: dict[str, tuple[type, msgspec.json.Decoder[Any]]] = {
            get_topic(cls): (cls, msgspec.json.Decoder(struct))
            for cls, struct in TYPED_STATES.items()
            if getattr(cls, "class_version", 1) == 1 and stored_fields(cls) == set(struct.__struct_fields__)
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self.mapper, name)

    def to_domain_event(self, stored: Any) -> Any:
        typed = self.typed.get(stored.topic)
        if typed is not None:
            try:
                return self._typed(typed[0], typed[1], stored)
            except Exception:  # noqa: BLE001 - not read exactly here: the mapper decides (and raises)
                pass
        return self.mapper.to_domain_event(stored)

    def _typed(self, cls: type, decoder: msgspec.json.Decoder[Any], stored: Any) -> Any:
        state = msgspec.structs.asdict(decoder.decode(stored.state))
        for name in _TIMES:
            stamp = state[name]
            if stamp.type != "datetime_iso":
                raise ValueError(stamp.type)
            state[name] = self._stamps.decode(stamp.data)
        state["originator_id"] = find_id_convertor(cls, type(stored.originator_id))(stored.originator_id)
        state["originator_version"] = stored.originator_version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return event


def fold_mapper(mapper: Any) -> Any:
    """A copy of ``mapper`` that decodes through :class:`OrjsonDecodingTranscoder` when its transcoder
    is eventsourcing's ``JSONTranscoder`` itself (any other transcoder: ``mapper`` unchanged), and
    the usage events through :class:`FoldMapper` when, besides, the mapper has no cipher and no
    compressor and datetimes are the library's ``datetime_iso``."""
    transcoder = getattr(mapper, "transcoder", None)
    if type(transcoder) is not JSONTranscoder:
        return mapper
    fast = copy.copy(mapper)
    fast.transcoder = OrjsonDecodingTranscoder(transcoder)
    stamps = transcoder.names.get("datetime_iso")
    if mapper.cipher is not None or mapper.compressor is not None or type(stamps) is not DatetimeAsISO:
        return fast
    return FoldMapper(fast, stamps)
