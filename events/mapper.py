"""The application's mapper: eventsourcing's ``Mapper``, with the states of the usage-day events
(what a large Mixpanel import stores by the ten thousand, mostly a list of ``$insert_id``
digests) and of the ticket events but ``Rated`` (what every webhook delivery stores; text,
None and datetimes only) encoded by orjson instead of the standard library's ``json`` module.

The bytes are those ``JSONTranscoder.encode`` writes: orjson writes the same compact JSON
(separators ``,`` and ``:``, text as UTF-8, the same escapes, keys in the dict's order) for the
plain values these events hold (text, integers, lists, dicts of text to integers, None), and
datetimes go through the transcoder's own registered transcoding: the event's own times
(``timestamp``, ``occurred_at``) are replaced by ``{"_type_": name, "_data_": ...}`` as the
transcoder's ``_encode_obj`` makes it before orjson is called (a call back from orjson per
datetime cost as much as the rest of the encoding), any other one reaches ``_encode_obj``
through ``default`` (``OPT_PASSTHROUGH_DATETIME``). Values where the two
could differ never reach orjson: only the event classes listed here take this path (orjson
writes UUIDs natively and floats in another notation, so a class holding those may not be
added), and anything orjson refuses (an integer beyond 64 bits, text that is not valid
Unicode) is encoded by the library instead, so the outcome is the library's. Decoding is the
library's, unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import get_topic

from events.signals import Ticket, UsageDay

# Not Ticket.Rated: it holds a float (csat).
ORJSON_CLASSES: frozenset[type] = frozenset({UsageDay.Opened, UsageDay.Counted, Ticket.Opened, Ticket.Changed,
                                             Ticket.Solved, Ticket.Reopened})  # fmt: skip
TIME_FIELDS = ("timestamp", "occurred_at")
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS


class StateMapper(Mapper[UUID]):
    """``Mapper`` whose ``to_stored_event`` encodes the states of :data:`ORJSON_CLASSES` with orjson
    (same bytes, see module doc); every other event, and any mapper with a cipher, a compressor
    or another transcoder, goes the library's way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        transcoder = self.transcoder
        self._orjson = (self.cipher is None and self.compressor is None and type(transcoder) is JSONTranscoder
                        and getattr(transcoder, "_encode_obj", None) is not None)  # fmt: skip
        self._topics: dict[type, str] = {}
        self._datetime = transcoder.types.get(datetime) if self._orjson else None  # type: ignore[attr-defined]

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        cls = type(domain_event)
        if not self._orjson or cls not in ORJSON_CLASSES:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        if getattr(cls, "class_version", 1) > 1:
            return super().to_stored_event(domain_event)
        transcoding = self._datetime
        if transcoding is not None:
            for name in TIME_FIELDS:
                value = state.get(name)
                if type(value) is datetime:
                    state[name] = {"_type_": transcoding.name, "_data_": transcoding.encode(value)}
        try:
            data = orjson.dumps(state, default=self.transcoder._encode_obj, option=_OPTIONS)  # type: ignore[attr-defined]
        except orjson.JSONEncodeError:
            return super().to_stored_event(domain_event)
        topic = self._topics.get(cls)
        if topic is None:
            topic = self._topics[cls] = get_topic(cls)
        return StoredEvent(originator_id=originator_id, originator_version=originator_version, topic=topic, state=data)
