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
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder, Transcoder, Transcoding


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


def fold_mapper(mapper: Any) -> Any:
    """A copy of ``mapper`` that decodes through :class:`OrjsonDecodingTranscoder` when its transcoder
    is eventsourcing's ``JSONTranscoder`` itself (any other transcoder: ``mapper`` unchanged)."""
    transcoder = getattr(mapper, "transcoder", None)
    if type(transcoder) is not JSONTranscoder:
        return mapper
    fast = copy.copy(mapper)
    fast.transcoder = OrjsonDecodingTranscoder(transcoder)
    return fast
