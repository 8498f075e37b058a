"""The import's shortcuts to usage-day events make what eventsourcing's own path makes.

- ``open_usage_day`` / ``count_usage`` build the same events (same fields, same order, same
  values; only the library's wall-clock ``timestamp`` differs) and the same aggregate state as
  ``UsageDay(...)`` and ``usage_day.count(...)``.
- ``StateMapper`` (orjson) stores, for every usage-day event and every ticket event but
  ``Rated``, the very bytes the library's ``Mapper`` with its ``JSONTranscoder`` stores, also for
  awkward text; what orjson refuses falls back to the library (same bytes, same error); every
  other event class is the library's.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, Mapper

from events.application import CustomerSuccess
from events.ingest import count_usage, open_usage_day
from events.mapper import ORJSON_CLASSES, StateMapper
from events.personal import build_codec
from events.settings import Settings
from events.signals import SurveyResponse, Ticket, UsageDay

AT = datetime(2026, 3, 2, 21, 5, 9, tzinfo=timezone.utc)
KW: dict[str, Any] = {"actor": "cli", "source": "mixpanel.import", "source_id": "c-1/2026-03-02", "occurred_at": AT}
AWKWARD = ['Report "Q1", {draft}', "C:\\exports\\x", "Übersicht — 日本", "tab\there", "nl\nand\r\n",
           "".join(map(chr, range(32))), "\x7f\x80\x9f\u00a0", "\u2028\u2029", "</script>", "emoji 😀 𝄞",
           "", "'single'", "/slash/", "\ufeffbom", "a" * 300]  # fmt: skip


def _fields(event: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in vars(event).items() if k != "timestamp"]


def _library_day(customer: str | None, account: str, day: str, counts: list[dict[str, Any]]) -> UsageDay:
    usage = UsageDay(customer_id=customer, account=account, day=day, **KW)
    for count in counts:
        usage.count(**count, **{**KW, "occurred_at": AT + timedelta(hours=1)})
    return usage


def _fast_day(customer: str | None, account: str, day: str, counts: list[dict[str, Any]]) -> UsageDay:
    usage = open_usage_day(UsageDay.create_id(customer, account, day), customer, account, day, KW)
    for count in counts:
        count_usage(usage, **count, kw={**KW, "occurred_at": AT + timedelta(hours=1)})
    return usage


COUNTS = [
    {"events": 3, "sessions": 1, "users": ["u1", "u2"], "features": {"Report Viewed": 2}, "insert_ids": ["a", "b", "c"]},
    {"events": 2, "sessions": 0, "users": ["u3"], "features": {AWKWARD[0]: 1, AWKWARD[2]: 1}, "insert_ids": ["d", "e"]},
]  # fmt: skip


@pytest.mark.parametrize("who", [("c-1", ""), (None, "acct-ghost")])
def test_shortcuts_make_the_events_and_state_the_library_makes(who: tuple[str | None, str]) -> None:
    library = _library_day(*who, "2026-03-02", COUNTS)
    fast = _fast_day(*who, "2026-03-02", COUNTS)
    ours, theirs = fast.collect_events(), library.collect_events()
    assert [type(e) for e in ours] == [type(e) for e in theirs] == [UsageDay.Opened, UsageDay.Counted, UsageDay.Counted]
    assert [_fields(e) for e in ours] == [_fields(e) for e in theirs]  # values and field order
    assert all(type(e.timestamp) is datetime and e.timestamp.tzinfo is not None for e in ours)
    state = {k: v for k, v in vars(fast).items() if k not in ("_created_on", "_modified_on")}
    assert state == {k: v for k, v in vars(library).items() if k not in ("_created_on", "_modified_on")}
    assert (fast.id, fast.version, fast.seen_inserts, fast.seen_users) == (
        library.id, 3, {"a", "b", "c", "d", "e"}, {"u1", "u2", "u3"})  # fmt: skip
    assert fast.created_on == ours[0].timestamp and fast.modified_on == ours[-1].timestamp


def _mappers(tmp_path: Path) -> tuple[StateMapper, Mapper[UUID]]:
    settings = Settings(data_dir=tmp_path, master_key="A" * 43 + "=")
    app = CustomerSuccess(settings, build_codec(settings))
    transcoder = app.construct_transcoder()
    assert isinstance(app.mapper, StateMapper) and type(transcoder) is JSONTranscoder
    library = Mapper[UUID](transcoder=transcoder)
    app.close()
    return app.mapper, library


def test_orjson_states_are_the_library_bytes_and_decode_the_same(tmp_path: Path) -> None:
    ours, library = _mappers(tmp_path)
    counts = [{"events": 2**40, "sessions": 0, "users": AWKWARD, "features": {t: i for i, t in enumerate(AWKWARD)},
               "insert_ids": AWKWARD}, *COUNTS]  # fmt: skip
    elsewhere = UsageDay(customer_id="c-2", account="", day="2026-03-04",
                         **{**KW, "occurred_at": datetime(2026, 3, 4, 23, 59, 59, 999_999, timezone(timedelta(hours=2)))})  # fmt: skip
    events = [*_library_day(AWKWARD[0], AWKWARD[4], "2026-03-02", counts).collect_events(),
              *_library_day(None, AWKWARD[9], "2026-03-03", counts).collect_events(), *elsewhere.collect_events()]  # fmt: skip
    for event in events:
        mine, theirs = ours.to_stored_event(event), library.to_stored_event(event)
        assert mine == theirs  # id, version, topic and the state's bytes
        assert ours.to_domain_event(mine) == event == library.to_domain_event(theirs)
        assert library.transcoder.decode(mine.state) == {
            k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version")}  # fmt: skip


def test_what_orjson_refuses_is_encoded_by_the_library(tmp_path: Path) -> None:
    ours, library = _mappers(tmp_path)

    class Label(str):
        pass

    beyond = _library_day("c-1", "", "2026-03-02", [{**COUNTS[0], "events": 2**70}]).collect_events()[1]  # not 64-bit
    subclass = _library_day("c-1", "", "2026-03-02", [{**COUNTS[0], "users": [Label("u1")]}]).collect_events()[1]
    for event in (beyond, subclass):
        assert ours.to_stored_event(event) == library.to_stored_event(event)
    surrogate = _library_day("c-1", "", "2026-03-02", [{**COUNTS[0], "users": ["\ud800"]}]).collect_events()[1]
    with pytest.raises(UnicodeEncodeError):
        library.to_stored_event(surrogate)
    with pytest.raises(UnicodeEncodeError):
        ours.to_stored_event(surrogate)


def test_ticket_states_are_the_library_bytes_and_decode_the_same(tmp_path: Path) -> None:
    """What a webhook delivery stores: every ticket event (orjson but for ``Rated``, which holds a
    float and stays the library's), with awkward text in every text field and None in the others."""
    ours, library = _mappers(tmp_path)
    events: list[Any] = []
    for i, text in enumerate(AWKWARD):
        at = {**KW, "source_id": text, "occurred_at": AT + timedelta(minutes=i)}
        ticket = Ticket(vendor="zendesk", vendor_id=text, customer_id=text if i % 2 else None, match=text,
                        key_owner=text, status=text, priority=None if i % 3 else text, subject=text or None,
                        requester=None if i % 2 else text, channel=text, snapshot_at=text, **at)  # fmt: skip
        ticket.change(status=text, priority=text if i % 2 else None, snapshot_at=text, **at)
        ticket.solve(solved_at=text, **at)
        ticket.reopen(status=text, **at)
        ticket.rate(csat=i / 7, raw_score=text, comment=text or None, **at)
        events += ticket.collect_events()
    assert {type(e) for e in events} == {Ticket.Opened, Ticket.Changed, Ticket.Solved, Ticket.Reopened, Ticket.Rated}
    for event in events:
        mine, theirs = ours.to_stored_event(event), library.to_stored_event(event)
        assert mine == theirs  # id, version, topic and the state's bytes
        assert ours.to_domain_event(mine) == event == library.to_domain_event(theirs)


def test_other_events_are_left_to_the_library(tmp_path: Path) -> None:
    ours, library = _mappers(tmp_path)
    ticket = Ticket(vendor="zendesk", vendor_id="7", customer_id=None, match="none", key_owner="k", status="open",
                    priority=None, subject=None, requester=None, channel=None, snapshot_at=AT.isoformat(), **KW)  # fmt: skip
    ticket.rate(csat=0.75, raw_score="good", comment=None, **KW)
    survey = SurveyResponse(response_id="r-1", customer_id=None, match="none", key_owner="k", score=9, comment=None,
                            email=None, **KW)  # fmt: skip
    for event in [*ticket.collect_events()[1:], *survey.collect_events()]:
        assert type(event) not in ORJSON_CLASSES
        assert ours.to_stored_event(event) == library.to_stored_event(event)
