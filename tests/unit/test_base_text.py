"""projections.base's text of values the views store: ``uuid_text`` (a UUID's canonical text, as
``str`` writes it; the audit chain hashes it) and ``utc_iso`` (the fixed-width UTC timestamps the
views sort and compare as text)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4, uuid5
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from projections.base import utc_iso, uuid_text

STRFTIME = "%Y-%m-%dT%H:%M:%S.%f+00:00"  # the format utc_iso has always written


def test_uuid_text_is_str_of_the_uuid_and_anything_else_is_str() -> None:
    values = [UUID(int=0), UUID(int=2**128 - 1), UUID(int=0xABCDEF), uuid5(UUID(int=7), "x"),
              *(uuid4() for _ in range(200))]  # fmt: skip
    for value in values:
        assert uuid_text(value) == str(value)
    assert uuid_text("unmatched:acme") == "unmatched:acme"
    assert uuid_text(12) == "12"


def reference(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime(STRFTIME)


ZONES = st.sampled_from([None, timezone.utc, timezone(timedelta(0)), timezone(timedelta(hours=5, minutes=30)),
                         timezone(timedelta(hours=-11, seconds=17)), ZoneInfo("UTC"), ZoneInfo("Europe/Berlin"),
                         ZoneInfo("America/Sao_Paulo")])  # fmt: skip


@given(moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), zone=ZONES)
def test_utc_iso_writes_what_strftime_wrote(moment: datetime, zone: Any) -> None:
    value = moment if zone is None else moment.replace(tzinfo=zone)
    assert utc_iso(value) == reference(value)


def test_utc_iso_is_fixed_width_utc_with_microseconds() -> None:
    assert utc_iso(datetime(2026, 10, 7, 18, 14, 30, tzinfo=timezone.utc)) == "2026-10-07T18:14:30.000000+00:00"
    assert utc_iso(datetime(2026, 10, 7, 18, 14, 30, 5)) == "2026-10-07T18:14:30.000005+00:00"  # naive = UTC
    berlin = datetime(2026, 7, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert utc_iso(berlin) == "2026-06-30T22:30:00.000000+00:00"
    assert utc_iso(datetime(999, 1, 1, tzinfo=timezone.utc)) == datetime(999, 1, 1).strftime(STRFTIME)
