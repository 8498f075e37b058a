"""Mixpanel raw event export (JSONL): product usage rolled up per customer-day.

- ``translate(line_obj, account_property)`` -> UsageEvent (None for events without a user).
- ``parse_chunk(lines, first_number, account_property)`` -> the events of a chunk of lines,
  grouped per account and UTC day (the same events ``parse_line`` makes, parsed faster).
- ``fetch_lines``: GET /api/2.0/export?project_id=…&from_date=…&to_date=… (HTTP Basic,
  service account), JSONL, gzip. The stored cursor is the last complete UTC day exported.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Any, NamedTuple

import msgspec
import orjson

from connectors.common import parse_time
from connectors.matching import CustomerDirectory, match
from events.errors import InvalidInputError
from events.ingest import ChunkColumns, Match, UsageEvent, UsageGroup

VENDOR = "mixpanel"
EXPORT_PATH = "/api/2.0/export"


def translate(record: Any, account_property: str = "account_id") -> UsageEvent:
    if not isinstance(record, dict) or not isinstance(record.get("properties"), dict):
        raise InvalidInputError("properties", "missing; expected {\"event\": ..., \"properties\": {...}}")
    props = record["properties"]
    name = record.get("event")
    if not isinstance(name, str) or not name:
        raise InvalidInputError("event", "missing event name")
    if "time" not in props:
        raise InvalidInputError("properties.time", "missing")
    email = props.get("$email")
    raw_time = props["time"]
    if type(raw_time) is int and 0 < raw_time < 10**11:  # the export's usual unix seconds: fast path
        when = datetime.fromtimestamp(raw_time, timezone.utc)
    else:
        when = parse_time(raw_time, "properties.time")
    user = props.get("distinct_id")
    if user in (None, ""):
        raise InvalidInputError("properties.distinct_id", "missing")
    insert_id = props.get("$insert_id")
    if not insert_id:  # Mixpanel dedupes such events on (event, distinct_id, time): so do we
        insert_id = "h:" + hashlib.sha256(f"{name}\x1f{user}\x1f{props['time']}".encode()).hexdigest()[:24]
    account = props.get(account_property)
    return UsageEvent(
        account=str(account) if account not in (None, "") else None,
        user=str(user),
        name=name[:200],
        time=when,
        insert_id=str(insert_id),
        email=email if isinstance(email, str) else None,
    )


def parse_line(line: bytes | str, account_property: str) -> UsageEvent:
    try:
        record = orjson.loads(line)  # the import's hot path: orjson parses ~5x faster than json
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError("line", f"not JSON ({exc.msg})") from None
    return translate(record, account_property)


def match_account(directory: CustomerDirectory, account: str | None, email: str | None) -> Match:
    return match(directory, source_field="mixpanel_account_id", source_value=account, email=email)


async def fetch_lines(client: Any, project_id: str, from_day: date, to_day: date) -> AsyncIterator[bytes]:
    params = {"project_id": project_id, "from_date": from_day.isoformat(), "to_date": to_day.isoformat()}
    async for line in client.stream_lines(EXPORT_PATH, params=params):
        if line.strip():
            yield line


# ------------------------------------------------------------------ chunks of export lines
FAST_FIELDS = frozenset({"time", "distinct_id", "$insert_id", "$email"})
_EPOCH_DAY = date(1970, 1, 1)


class ParsedChunk(NamedTuple):
    """What :func:`parse_chunk` makes of a chunk of lines (picklable: it may come from another process)."""

    groups: list[UsageGroup]  # per (account, UTC day), in the order of their first event
    emails: dict[str | None, str | None]  # each account's first event's e-mail (for matching)
    rejected: list[tuple[str, str, str]]  # (where, field, reason)


@functools.cache
def _line_decoder(account_property: str) -> msgspec.json.Decoder[Any] | None:
    """A typed decoder of just the fields a usage event needs, in the shape the export has
    them (anything else falls back to :func:`parse_line`). None when the account property is
    one of those fields."""
    if account_property in FAST_FIELDS:
        return None
    props = msgspec.defstruct("ExportProperties", [
        ("time", int), ("distinct_id", str), ("insert_id", str | None, msgspec.field(default=None, name="$insert_id")),
        ("account", str | None, msgspec.field(default=None, name=account_property)),
        ("email", Any, msgspec.field(default=None, name="$email")),
    ])  # fmt: skip
    line = msgspec.defstruct("ExportLine", [("event", str), ("properties", props)])
    return msgspec.json.Decoder(line)


def parse_text(text: str, first_number: int, account_property: str) -> ParsedChunk:
    """:func:`parse_chunk` of the lines of ``text`` (ended by ``\\n``, the last one maybe not).

    The usual export chunk (every line the usual shape, no ``$insert_id`` digest twice) is
    parsed column by column instead of line by line: the same groups, e-mails and (no)
    rejections, in the same order, with far fewer Python steps per line. Any other chunk is
    parsed by :func:`parse_chunk`."""
    lines = text.split("\n")
    usual = _usual_chunk(lines[:-1] if lines[-1] == "" else lines, account_property)
    return usual if usual is not None else parse_chunk(lines, first_number, account_property, line_end="\n")


def _usual_chunk(lines: list[str], account_property: str) -> ParsedChunk | None:
    """The chunk parsed column by column, or None if a line needs more than that: one the
    typed decoder refuses (blank, bad JSON, another shape), an empty event name or user, a
    time that is not plain unix seconds, an event name longer than 200 characters, no
    ``$insert_id``, or a digest seen twice (events repeated within the chunk)."""
    decoder = _line_decoder(account_property)
    if decoder is None or not lines:
        return None
    try:
        records = list(map(decoder.decode, lines))
    except (msgspec.DecodeError, RecursionError):
        return None
    props = [r.properties for r in records]
    names = [r.event for r in records]
    users = [p.distinct_id for p in props]
    inserts = [p.insert_id for p in props]
    seconds = [p.time for p in props]
    if not (all(names) and all(users) and all(inserts) and 0 < min(seconds) and max(seconds) < 10**11
            and max(map(len, names)) <= 200):  # fmt: skip
        return None
    sha256 = hashlib.sha256
    digests = [sha256(i.encode()).hexdigest()[:16] for i in inserts]  # events.ingest.short_hash, inlined
    if len(set(digests)) != len(digests):
        return None
    interned: dict[str, str] = {}  # one object per user and name: pickled once, compared by identity first
    users = list(map(interned.setdefault, users, users))
    names = list(map(interned.setdefault, names, names))
    members: dict[tuple[str | None, int], list[int]] = {}
    for ordinal, key in enumerate(zip([p.account or None for p in props], [s // 86400 for s in seconds])):
        positions = members.get(key)
        if positions is None:
            positions = members[key] = []
        positions.append(ordinal)
    columns = ChunkColumns(("flat", digests, users, names, seconds, list(members.values())))
    groups: list[UsageGroup] = []
    emails: dict[str | None, str | None] = {}
    days: dict[int, date] = {}
    for index, ((account, number), positions) in enumerate(members.items()):  # in the order of their first event
        if account not in emails:  # this group holds the account's first event
            email = props[positions[0]].email
            emails[account] = email if type(email) is str else None
        day = days.get(number)
        if day is None:
            day = days[number] = _EPOCH_DAY + timedelta(days=number)
        group = UsageGroup.of_columns(account, day, positions[0], columns, index)
        group.sorted_inserts = sorted(map(digests.__getitem__, positions))  # what summarise() makes of the columns
        group.distinct_users = list(dict.fromkeys(map(users.__getitem__, positions)))
        group.name_counts = dict(Counter(map(names.__getitem__, positions)))
        group.latest = group.latest_all = max(map(seconds.__getitem__, positions))
        group.size = len(positions)
        groups.append(group)
    return ParsedChunk(groups, emails, [])


def parse_chunk(lines: Iterable[str | bytes], first_number: int, account_property: str,
                line_end: str = "") -> ParsedChunk:  # fmt: skip
    """Parse, validate and group a chunk of export lines (``first_number`` is the first one's
    line number). Each event is what :func:`parse_line` makes of its line; the usual export
    line takes a typed decode and integer arithmetic for its UTC day instead of a dict and a
    datetime. Pure: runs in a worker process for large imports.

    ``line_end``: the lines were split off a text without it (``text.split("\n")``: the
    last piece never had one); it is put back before a line goes to :func:`parse_line`, whose
    error messages can depend on it."""
    lines = lines if isinstance(lines, list) else list(lines)
    last = len(lines) - 1
    decoder = _line_decoder(account_property)
    fast_errors = (msgspec.DecodeError, RecursionError) if decoder is not None else ()  # deep nesting: RecursionError
    decode = decoder.decode if decoder is not None else None
    sha256 = hashlib.sha256
    groups: dict[tuple[str | None, date], tuple[UsageGroup, set[str]]] = {}
    emails: dict[str | None, str | None] = {}
    rejected: list[tuple[str, str, str]] = []
    days: dict[int, date] = {}
    interned: dict[str, str] = {}
    for ordinal, line in enumerate(lines):
        try:
            if decode is None:
                raise InvalidInputError("line", "no fast path")
            record = decode(line)
            props = record.properties
            name, user, seconds = record.event, props.distinct_id, props.time
            if not (name and user and 0 < seconds < 10**11):
                raise InvalidInputError("line", "not the usual shape")
            insert_id = props.insert_id
            if not insert_id:
                insert_id = "h:" + sha256(f"{name}\x1f{user}\x1f{seconds}".encode()).hexdigest()[:24]
            account = props.account or None
            email = props.email
            day = days.get(seconds // 86400)
            if day is None:
                day = days[seconds // 86400] = _EPOCH_DAY + timedelta(days=seconds // 86400)
            moment: int | datetime = seconds
            name = name[:200]
        except (InvalidInputError, *fast_errors):
            if not line.strip():
                continue
            try:
                event = parse_line(line + line_end if line_end and ordinal < last else line, account_property)  # type: ignore[operator]
            except InvalidInputError as exc:
                rejected.append((f"line {first_number + ordinal}", exc.field, str(exc).split(": ", 1)[-1]))
                continue
            account, user, name, moment, insert_id, email = event
            day = (moment if moment.tzinfo is timezone.utc else moment.astimezone(timezone.utc)).date()
        if account not in emails:
            emails[account] = email if type(email) is str else None
        entry = groups.get((account, day))
        if entry is None:
            entry = groups[(account, day)] = (UsageGroup(account, day, ordinal), set())
        group, kept = entry
        digest = sha256(insert_id.encode()).hexdigest()[:16]  # events.ingest.short_hash, inlined
        if digest in kept:
            group.repeats.append(moment)
            continue
        kept.add(digest)
        group.inserts.append(digest)
        group.users.append(interned.setdefault(user, user))  # one object per user: pickled once
        group.names.append(interned.setdefault(name, name))
        group.times.append(moment)
        group.ordinals.append(ordinal)
    return ParsedChunk([group.summarise() for group, _ in groups.values()], emails, rejected)
