"""The vendors' pure functions on the payload shapes documented in ../shared/VENDORS.md:
``translate`` (vendor record -> normalised signal), the webhook signature checks (good, bad,
stale), and matching a record to a customer. Signatures are computed here from the documented
schemes, independently of the connectors and of the test fakes."""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import io
import json
import pickle
import threading
from multiprocessing.shared_memory import SharedMemory
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from connectors import intercom, mixpanel, nps, sendgrid, zendesk
from connectors.matching import email_domain, match
from connectors.workers import SharedSegments, _shared_text, chunk_lines, line_chunks
from events.collector import collector_paused
from events.errors import InvalidInputError
from events.ingest import Match, Rating, UsageGroup, moment_of, short_hash


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def field_of(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidInputError) as caught:
        call(*args)
    return caught.value.field


# --------------------------------------------------------------------------------------- Zendesk
ZENDESK_TICKET = {  # VENDORS.md §1, "Ticket shape (excerpt)"
    "id": 35436, "status": "open", "priority": "high", "type": "incident", "subject": "Help, my printer is on fire!",
    "requester_id": 20978392, "organization_id": 509974, "assignee_id": 235323, "group_id": 98738,
    "tags": ["enterprise"], "created_at": "2009-07-20T22:55:29Z", "updated_at": "2011-05-05T10:38:52Z",
    "generated_timestamp": 1304553600, "satisfaction_rating": {"id": 1234, "score": "good", "comment": "Great support!"},
    "via": {"channel": "web"}, "custom_fields": [{"id": 27642, "value": "745"}],
}  # fmt: skip
ZENDESK_EVENT = {  # VENDORS.md §1, the event-subscription payload (elided times filled in)
    "type": "zen:event-type:ticket.created", "account_id": 88888888, "id": "01HN0000000000000000000000",
    "time": "2024-04-17T17:18:10Z", "zendesk_event_version": "2022-11-06", "subject": "zen:ticket:35436",
    "detail": {"id": "35436", "status": "Open", "via": {"channel": "web"}, "created_at": "2024-04-17T17:18:09Z",
               "updated_at": "2024-04-17T17:18:10Z", "organization_id": "509974", "priority": "Urgent"},
    "event": {"current": {"status": "Open"}},
}  # fmt: skip


def test_zendesk_ticket_of_the_incremental_export() -> None:
    snap = zendesk.translate(ZENDESK_TICKET)
    assert (snap.vendor, snap.vendor_id, snap.org_ref) == ("zendesk", "35436", "509974")
    assert (snap.status, snap.priority, snap.channel) == ("open", "high", "web")
    assert snap.subject == "Help, my printer is on fire!" and snap.requester_email is None
    assert snap.created_at == utc("2009-07-20T22:55:29Z")
    assert snap.updated_at == utc("2011-05-05T10:38:52Z")  # generated_timestamp (00:00 that day) is older
    assert snap.rating == Rating(1.0, "good", "Great support!", utc("2011-05-05T10:38:52Z"))


def test_zendesk_requester_from_the_users_sideload_or_the_via_address() -> None:
    assert zendesk.translate(ZENDESK_TICKET, {20978392: "ann@acme.example"}).requester_email == "ann@acme.example"
    by_mail = {**ZENDESK_TICKET, "via": {"channel": "email", "source": {"from": {"address": "bo@globex.example"}}}}
    assert zendesk.translate(by_mail, {20978392: "ann@acme.example"}).requester_email == "bo@globex.example"


def test_zendesk_generated_timestamp_is_the_change_clock_and_scores_map_to_csat() -> None:
    later = {**ZENDESK_TICKET, "generated_timestamp": 1304640000}  # 2011-05-06: a change after updated_at
    assert zendesk.translate(later).updated_at == utc("2011-05-06T00:00:00Z")
    bad = {**ZENDESK_TICKET, "satisfaction_rating": {"score": "bad", "comment": None}}
    assert zendesk.translate(bad).rating == Rating(0.0, "bad", None, utc("2011-05-05T10:38:52Z"))
    for score in ("offered", "unoffered"):
        assert zendesk.translate({**ZENDESK_TICKET, "satisfaction_rating": {"score": score}}).rating is None
    assert zendesk.translate({**ZENDESK_TICKET, "organization_id": None, "priority": None}).org_ref is None


@pytest.mark.parametrize(
    ("change", "field"),
    [({"id": None}, "ticket.id"), ({"created_at": None}, "ticket.created_at"),
     ({"created_at": "last tuesday"}, "ticket.created_at"), ({"status": ""}, "ticket.status")],
)  # fmt: skip
def test_zendesk_bad_ticket_names_the_field(change: dict[str, Any], field: str) -> None:
    assert field_of(zendesk.translate, {**ZENDESK_TICKET, **change}) == field
    assert field_of(zendesk.translate, ["not", "a", "ticket"]) == "ticket"


def test_zendesk_export_page_keeps_good_tickets_beside_bad_ones() -> None:
    page = {"tickets": [ZENDESK_TICKET, {"id": 2}], "after_cursor": "MTU3NjYxMzUzOS4wfHwxMjY3fA==",
            "before_cursor": None, "end_of_stream": True, "users": [{"id": 20978392, "email": "ann@acme.example"}]}  # fmt: skip
    snaps, after, end = zendesk.translate_page(page)
    assert after == "MTU3NjYxMzUzOS4wfHwxMjY3fA==" and end is True
    assert snaps[0].requester_email == "ann@acme.example"  # type: ignore[union-attr]
    assert isinstance(snaps[1], InvalidInputError) and snaps[1].field == "ticket.created_at"
    assert field_of(zendesk.translate_page, {"results": []}) == "page.tickets"


def test_zendesk_webhook_event_to_ticket() -> None:
    snap = zendesk.translate_webhook(ZENDESK_EVENT)
    assert snap is not None
    assert (snap.vendor_id, snap.org_ref, snap.status, snap.priority) == ("35436", "509974", "open", "urgent")
    assert (snap.created_at, snap.updated_at) == (utc("2024-04-17T17:18:09Z"), utc("2024-04-17T17:18:10Z"))
    bare = {**ZENDESK_EVENT, "detail": {"id": "35436"}}  # status from event.current, times from the event
    snap = zendesk.translate_webhook(bare)
    assert (
        snap is not None
        and snap.status == "open"
        and snap.created_at == snap.updated_at == utc(str(ZENDESK_EVENT["time"]))
    )
    assert zendesk.translate_webhook({**ZENDESK_EVENT, "type": "zen:event-type:user.created"}) is None
    assert field_of(zendesk.translate_webhook, {**ZENDESK_EVENT, "detail": None}) == "detail"
    assert field_of(zendesk.translate_webhook, [ZENDESK_EVENT]) == "body"


def zendesk_headers(secret: str, stamp: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest()
    return {"x-zendesk-webhook-signature": base64.b64encode(digest).decode(),
            "x-zendesk-webhook-signature-timestamp": stamp}  # fmt: skip


def test_zendesk_webhook_signature() -> None:
    secret, body, stamp = "dGhpc19zZWNyZXQ", json.dumps(ZENDESK_EVENT).encode(), "2024-04-17T17:18:10Z"
    now = utc(stamp) + timedelta(seconds=30)
    good = zendesk_headers(secret, stamp, body)
    assert zendesk.verify_webhook(secret, good, body, now=now)
    assert not zendesk.verify_webhook("another-secret", good, body, now=now)
    assert not zendesk.verify_webhook(secret, good, body + b" ", now=now)  # body changed after signing
    assert not zendesk.verify_webhook("", good, body, now=now)  # no secret configured: refuse everything
    hexed = {**good, "x-zendesk-webhook-signature": hmac.new(secret.encode(), stamp.encode() + body,
                                                             hashlib.sha256).hexdigest()}  # fmt: skip
    assert not zendesk.verify_webhook(secret, hexed, body, now=now)  # the digest is base64 of binary, not hex
    assert not zendesk.verify_webhook(secret, {"x-zendesk-webhook-signature-timestamp": stamp}, body, now=now)
    stale = utc(stamp) + timedelta(minutes=6)
    assert not zendesk.verify_webhook(secret, good, body, now=stale)  # replayed later
    assert not zendesk.verify_webhook(secret, good, body, now=utc(stamp) - timedelta(minutes=6))
    odd = zendesk_headers(secret, "yesterday", body)
    assert not zendesk.verify_webhook(secret, odd, body, now=now)


# -------------------------------------------------------------------------------------- Intercom
def intercom_conversation(**changes: Any) -> dict[str, Any]:
    conversation = {  # VENDORS.md §2, conversation fields
        "type": "conversation", "id": "1295", "created_at": 1571080000, "updated_at": 1571080403,
        "state": "closed", "open": False, "read": True, "priority": "priority", "waiting_since": None,
        "snoozed_until": None, "admin_assignee_id": 814860, "tags": {"type": "tag.list", "tags": []},
        "source": {"type": "conversation", "delivered_as": "customer_initiated", "subject": "",
                   "body": "<p>Export is broken</p>", "author": {"type": "user", "email": "ann@globex.example"}},
        "contacts": {"contacts": [{"type": "contact", "id": "5ba682d23d7cf92bef87bfd4"}]},
        "statistics": {"time_to_admin_reply": 300, "time_to_first_close": 403},
        "conversation_rating": {"rating": 5, "remark": "Quick!", "created_at": 1571080500,
                                "contact": {"id": "5ba682d23d7cf92bef87bfd4"}, "teammate": {"id": "814860"}},
        "custom_attributes": {"company_id": "ic-globex"},
    }  # fmt: skip
    conversation.update(changes)
    return conversation


def test_intercom_conversation_to_ticket() -> None:
    snap = intercom.translate(intercom_conversation())
    assert (snap.vendor, snap.vendor_id, snap.org_ref, snap.requester_email) == (
        "intercom", "1295", "ic-globex", "ann@globex.example")  # fmt: skip
    assert (snap.status, snap.priority, snap.channel) == ("closed", "high", "customer_initiated")
    assert snap.subject == "<p>Export is broken</p>"  # no subject: the first message
    assert (snap.created_at, snap.updated_at) == (utc("2019-10-14T19:06:40Z"), utc("2019-10-14T19:13:23Z"))
    assert snap.rating == Rating(1.0, "5", "Quick!", utc("2019-10-14T19:15:00Z"))  # 1-5 -> 0..1


def test_intercom_company_rating_and_state_variants() -> None:
    no_attr = intercom_conversation(custom_attributes={}, company={"type": "company", "id": "c-42"})
    assert intercom.translate(no_attr).org_ref == "c-42"
    assert intercom.translate(intercom_conversation(custom_attributes=None)).org_ref is None
    one = intercom_conversation(conversation_rating={"rating": 1, "remark": None})
    assert intercom.translate(one).rating == Rating(0.0, "1", None, utc("2019-10-14T19:13:23Z"))
    for out_of_range in (0, 6, "5", None):
        rated = intercom_conversation(conversation_rating={"rating": out_of_range})
        assert intercom.translate(rated).rating is None
    snoozed = intercom.translate(intercom_conversation(state="snoozed", priority="not_priority"))
    assert (snoozed.status, snoozed.priority) == ("snoozed", "normal")
    assert intercom.translate(intercom_conversation(state=None, open=True)).status == "open"


@pytest.mark.parametrize(("change", "field"), [({"id": None}, "conversation.id"),
                                               ({"created_at": None}, "conversation.created_at"),
                                               ({"updated_at": "soon"}, "conversation.updated_at")])  # fmt: skip
def test_intercom_bad_conversation_names_the_field(change: dict[str, Any], field: str) -> None:
    assert field_of(intercom.translate, intercom_conversation(**change)) == field


def test_intercom_notification_event() -> None:
    notification = {  # VENDORS.md §2, webhook payload
        "type": "notification_event", "app_id": "d90noo0b", "id": "notif_4e3504a3-0000",
        "topic": "conversation.admin.closed", "created_at": 1571080403,
        "data": {"type": "notification_event_data", "item": intercom_conversation()},
    }  # fmt: skip
    snap = intercom.translate_webhook(notification)
    assert snap is not None and snap.vendor_id == "1295" and snap.status == "closed"
    ping = {**notification, "topic": "ping", "data": {"type": "notification_event_data", "item": {"type": "ping"}}}
    assert intercom.translate_webhook(ping) is None
    assert field_of(intercom.translate_webhook, {"type": "conversation"}) == "type"
    assert field_of(intercom.translate_webhook, ["notification_event"]) == "type"


def test_intercom_webhook_signature() -> None:
    secret, body = "client-secret", b'{"type":"notification_event","id":"notif_1"}'
    good = {"x-hub-signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()}
    assert intercom.verify_webhook(secret, good, body)
    assert not intercom.verify_webhook("other-secret", good, body)
    assert not intercom.verify_webhook(secret, good, body + b"\n")
    assert not intercom.verify_webhook(secret, {"x-hub-signature": good["x-hub-signature"][5:]}, body)  # no sha1=
    sha256 = {"x-hub-signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    assert not intercom.verify_webhook(secret, sha256, body)
    assert not intercom.verify_webhook(secret, {}, body)
    assert not intercom.verify_webhook("", good, body)


# -------------------------------------------------------------------------------------- Mixpanel
MIXPANEL_LINE = ('{"event":"Signed Up","properties":{"time":1602611311,"$insert_id":"hpuDqcvpltpCjBsebtxwadtEBDnFAdycabFb",'
                 '"mp_processing_time_ms":1602625711874,"distinct_id":"user123","$email":"a@b.com"}}')  # fmt: skip


def test_mixpanel_raw_export_line() -> None:
    event = mixpanel.parse_line(MIXPANEL_LINE, "account_id")  # VENDORS.md §3 example
    assert (event.name, event.user, event.account, event.email) == ("Signed Up", "user123", None, "a@b.com")
    assert event.time == datetime.fromtimestamp(1602611311, UTC)
    assert event.insert_id == "hpuDqcvpltpCjBsebtxwadtEBDnFAdycabFb"
    record = json.loads(MIXPANEL_LINE)
    record["properties"]["company"] = 42
    assert mixpanel.translate(record, "company").account == "42"  # the configured account property
    assert mixpanel.parse_line(MIXPANEL_LINE.encode(), "account_id").user == "user123"  # bytes from the stream


def test_mixpanel_time_in_ms_and_events_without_insert_id() -> None:
    record = json.loads(MIXPANEL_LINE)
    record["properties"]["time"] = 1602611311123  # time_in_ms=true
    assert mixpanel.translate(record).time == datetime.fromtimestamp(1602611311.123, UTC)
    del record["properties"]["$insert_id"]
    first, again = mixpanel.translate(record), mixpanel.translate(json.loads(json.dumps(record)))
    assert first.insert_id == again.insert_id and first.insert_id.startswith("h:")  # deduped as Mixpanel does
    record["properties"]["time"] += 1
    assert mixpanel.translate(record).insert_id != first.insert_id


@pytest.mark.parametrize(
    ("line", "field"),
    [('{"event":"x"}', "properties"), ('{"properties":{"time":1,"distinct_id":"u"}}', "event"),
     ('{"event":"x","properties":{"distinct_id":"u"}}', "properties.time"),
     ('{"event":"x","properties":{"time":1602611311}}', "properties.distinct_id"),
     ('{"event":"x","properties":{"time":1602611311,"distinct_id":""}}', "properties.distinct_id"),
     ('{"event":"x","properties":{"time":"noon","distinct_id":"u"}}', "properties.time"),
     ('{"event":"x","properties":{"ti', "line"), ("[1, 2]", "properties")],
)  # fmt: skip
def test_mixpanel_bad_line_names_the_field(line: str, field: str) -> None:
    assert field_of(mixpanel.parse_line, line, "account_id") == field


def _line(props: dict[str, Any], event: Any = "Report Viewed") -> str:
    return json.dumps({"event": event, "properties": {"time": 1602611311, "distinct_id": "u1", **props}})


EXPORT_LINES = [
    MIXPANEL_LINE,
    _line({"$insert_id": "a1", "account_id": "acct-1", "$email": "ann@acme.example", "mp_lib": "web"}),
    _line({"$insert_id": "a1", "account_id": "acct-1", "time": 1602611399}),  # same insert id: counted once
    _line({"$insert_id": "a2", "account_id": "acct-1", "time": 1602611311.5}),  # a float time
    _line({"$insert_id": "a3", "account_id": "acct-1", "time": 1602611311123}),  # milliseconds
    _line({"$insert_id": "a4", "account_id": "acct-1", "time": "2020-10-13T23:59:59+02:00"}),  # ISO, other offset
    _line({"$insert_id": "a5", "account_id": "acct-1", "time": "1602611311"}),  # digits as text
    _line({"$insert_id": "a6", "account_id": 42, "distinct_id": 7}),  # numbers where text is usual
    _line({"account_id": "acct-2"}),  # no $insert_id: Mixpanel's (event, distinct_id, time)
    _line({"$insert_id": "", "account_id": "acct-2", "time": 1602611312}),
    _line({"$insert_id": None, "account_id": "", "$email": 5}),  # empty account, e-mail not text
    _line({"$insert_id": "a7", "account_id": "acct-2"}, event="x" * 300),  # long name: cut at 200
    _line({"$insert_id": "a8", "account_id": "acct-2", "$email": "bo@globex.example"}, event="$session_start"),
    _line({"$insert_id": "a9", "account_id": None, "time": 86_400 * 20_000 - 1}),  # the last second of a day
    "", "   ", '{"event":"x"}', '{"properties":{"time":1,"distinct_id":"u"}}', _line({"time": True}),
    _line({"time": "noon"}), _line({"distinct_id": ""}), _line({"time": -5}), _line({}, event=""),
    '{"event":"x","properties":{"ti', "[1, 2]", '{"event":"x","properties":[]}', "not json at all",
    _line({"$insert_id": "b1", "deep": [[[[[]]]]] * 3}), _line({"deep": "[" * 2_000}).replace('"' + "[" * 2_000 + '"', "[" * 2_000 + "]" * 2_000),
    _line({"$insert_id": "b2", "bad": "\x01"}).replace("\\u0001", "\x01"),  # a raw control character: not JSON
]


def _chunk_events(parsed: mixpanel.ParsedChunk) -> list[tuple[Any, ...]]:
    return sorted((o, g.account, g.day, d, u, n, moment_of(t))
                  for g in parsed.groups for d, u, n, t, o in zip(g.inserts, g.users, g.names, g.times, g.ordinals))  # fmt: skip


def _line_by_line(lines: list[str], first: int, account_property: str) -> tuple[list[Any], list[Any], int]:
    """What parse_line makes of each line, deduplicated per account-day as the roll-up does."""
    events, rejected, seen, repeats = [], [], set(), 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            e = mixpanel.parse_line(line, account_property)
        except InvalidInputError as exc:
            rejected.append((f"line {first + i}", exc.field, str(exc).split(": ", 1)[-1]))
            continue
        key = (e.account, e.time.astimezone(UTC).date(), short_hash(e.insert_id))
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        events.append((i, e.account, key[1], key[2], e.user, e.name, e.time))
    return events, rejected, repeats


@pytest.mark.parametrize("account_property", ["account_id", "$email", "mp_lib"])
def test_mixpanel_chunk_parses_each_line_as_parse_line_does(account_property: str) -> None:
    """The typed fast path and its fallback give, line for line, the events and rejections of
    parse_line ("$email" as the account property takes the fallback for every line)."""
    parsed = mixpanel.parse_chunk(EXPORT_LINES, 11, account_property)
    events, rejected, repeats = _line_by_line(EXPORT_LINES, 11, account_property)
    assert _chunk_events(parsed) == events
    assert parsed.rejected == rejected and len(rejected) == 12
    assert sum(len(g.repeats) for g in parsed.groups) == repeats
    assert sum(g.size for g in parsed.groups) == len(events) + repeats
    first_email: dict[Any, Any] = {}
    for line in EXPORT_LINES:
        try:
            e = mixpanel.parse_line(line, account_property)
        except InvalidInputError:
            continue
        first_email.setdefault(e.account, e.email)
    assert parsed.emails == first_email  # matching sees each account's first e-mail, as before
    text = "".join(line + "\n" for line in EXPORT_LINES)  # as split off a file read in blocks
    assert mixpanel.parse_chunk(text.split("\n"), 11, account_property, line_end="\n") == \
        mixpanel.parse_chunk(list(io.StringIO(text, newline="")), 11, account_property)  # fmt: skip
    for g in parsed.groups:  # what the roll-up takes when every event is new
        assert g.sorted_inserts == sorted(g.inserts) and g.distinct_users == list(dict.fromkeys(g.users))
        assert moment_of(g.latest) == max(moment_of(t) for t in g.times)


def _usual_export(n: int = 400) -> list[str]:
    """Lines of the export's usual shape (what ``parse_text`` parses column by column): several
    accounts and none, e-mails of several kinds, three UTC days (the last second of a day too),
    users and names repeated, a name of exactly 200 characters."""
    accounts = ["acct-1", "acct-2", "", None, "acct-3"]
    emails = ["ann@acme.example", None, 5, "", {"x": 1}]
    names = ["$session_start", "Report Viewed", "Über — 日本", "n" * 200]
    return [_line({"time": 86_400 * 20_000 + (86_399 if i == 7 else (i * 977) % (3 * 86_400)), "distinct_id": f"u{i % 13}",
                   "$insert_id": f"ins-{i}", "account_id": accounts[i % 5], "$email": emails[i % 7 % 5],
                   "mp_lib": "web", "$os": "Linux"}, event=names[i % 4])
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("account_property", ["account_id", "mp_lib"])
def test_a_usual_chunk_parsed_by_columns_is_what_parse_chunk_makes(account_property: str) -> None:
    """``parse_text`` takes the usual chunk column by column (same groups, columns, summaries,
    e-mails, no rejections); any chunk with a line out of the usual goes to ``parse_chunk``."""
    lines = _usual_export()
    assert mixpanel._usual_chunk(lines, account_property) is not None  # the column path is taken
    for text in ("".join(line + "\n" for line in lines), "\n".join(lines)):  # the last line ended or not
        assert mixpanel.parse_text(text, 11, account_property) == \
            mixpanel.parse_chunk(text.split("\n"), 11, account_property, line_end="\n")  # fmt: skip
    odd_lines = [lines[5], "", "   ", _line({"$insert_id": "x", "time": 1602611311123}), _line({"time": "2020-10-13"}),
                 _line({"$insert_id": "y"}, event="n" * 201), _line({"account_id": "acct-1"}),
                 _line({"$insert_id": "z", "distinct_id": ""}), _line({"$insert_id": "w", "distinct_id": 7}),
                 '{"event":"x","properties":{"ti', EXPORT_LINES[-1]]  # fmt: skip
    for odd in odd_lines:  # a repeated line, blank lines, ms, ISO, long name, no insert id, bad user, bad JSON
        mixed = [*lines[:200], odd, *lines[200:]]
        assert mixpanel._usual_chunk(mixed, account_property) is None
        text = "".join(line + "\n" for line in mixed)
        assert mixpanel.parse_text(text, 11, account_property) == \
            mixpanel.parse_chunk(text.split("\n"), 11, account_property, line_end="\n")  # fmt: skip


def test_parsed_chunks_cross_processes_unchanged_and_columns_stay_packed() -> None:
    """A parsed chunk pickled (as the worker sends it) is equal to what was parsed; the summary
    the roll-up reads comes without unpacking the per-event columns."""
    usual = "".join(line + "\n" for line in _usual_export())
    for parsed in (mixpanel.parse_text(usual, 1, "account_id"), mixpanel.parse_chunk(EXPORT_LINES, 11, "account_id")):
        again = pickle.loads(pickle.dumps(parsed, pickle.HIGHEST_PROTOCOL))
        assert (again.emails, again.rejected, len(again.groups)) == (parsed.emails, parsed.rejected, len(parsed.groups))
        for ours, theirs in zip(again.groups, parsed.groups, strict=True):
            assert [getattr(ours, n) for n in ("account", "day", "first", *UsageGroup.SUMMARY)] == \
                [getattr(theirs, n) for n in ("account", "day", "first", *UsageGroup.SUMMARY)]  # fmt: skip
            with pytest.raises(AttributeError):
                object.__getattribute__(ours, "inserts")  # not unpacked
        assert again == parsed  # columns read (unpacked) on demand


def test_chunk_text_crosses_in_shared_memory_unchanged_and_is_removed() -> None:
    """A chunk handed to the worker through shared memory reads back as the same text (any
    str: non-ASCII, a lone surrogate, empty); segments are reused when big enough and all
    removed at the end."""
    segments = SharedSegments()
    texts = ["a" * 1_000, "Übersicht — 日本 😀\n" * 50, "\ud800 lone\n", "", "b" * 900]
    refs = []
    for text in texts:
        shared = segments.put(text)
        assert shared is not None
        ref, memory = shared
        assert _shared_text(ref) == text
        refs.append(ref)
        segments.give_back(memory)
    assert len({ref.name for ref in refs}) == 2  # the 2nd is too big for the 1st segment; later ones reuse them
    assert segments.put(["a list", "of lines"]) is None  # lists of lines cross as they are
    segments.close()
    for ref in refs:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=ref.name)


class _Trickle(io.TextIOBase):
    """A text stream that returns at most ``step`` characters per read (block edges anywhere)."""

    def __init__(self, text: str, step: int) -> None:
        self.text, self.position, self.step = text, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        take = self.step if size is None or size < 0 else min(size, self.step)
        out = self.text[self.position : self.position + take]
        self.position += len(out)
        return out


@given(st.lists(st.sampled_from(["a", "{}", " ", "\n", "\r", "\r\n", "\u2028"]), max_size=60),
       st.integers(1, 7), st.integers(1, 9))  # fmt: skip
def test_chunks_of_a_text_stream_split_lines_as_the_stream_does(pieces: list[str], size: int, step: int) -> None:
    text = "".join(pieces)
    lines = list(io.StringIO(text, newline=""))  # what iterating `open(path, newline="")` gives
    chunks = [(list(chunk_lines(c)), n) for c, n in line_chunks(_Trickle(text, step), size)]
    assert [c for c, _ in chunks] == [lines[i : i + size] for i in range(0, len(lines), size)]
    assert all(len(c) == n for c, n in chunks)


# -------------------------------------------------------------------------------------- SendGrid
def sendgrid_event(kind: str, **extra: Any) -> dict[str, Any]:
    return {"email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "event": kind, "category": "cat facts", "sg_event_id": f"sg-{kind}-1",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "extra", "url", "reason"),
    [("processed", {}, None, None), ("deferred", {"response": "400 try again later", "attempt": "5"}, None, None),
     ("delivered", {"response": "250 OK", "ip": "168.1.1.1"}, None, None),
     ("open", {"useragent": "Mozilla/4.0", "ip": "255.255.255.255", "sg_machine_open": False}, None, None),
     ("click", {"url": "http://www.sendgrid.com/", "useragent": "Mozilla/4.0"}, "http://www.sendgrid.com/", None),
     ("bounce", {"reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce"}, None, "500 unknown recipient"),
     ("dropped", {"reason": "Bounced Address", "status": "5.0.0"}, None, "Bounced Address"),
     ("spamreport", {}, None, None), ("unsubscribe", {}, None, None),
     ("group_unsubscribe", {"asm_group_id": 10, "url": "http://x.example/u"}, "http://x.example/u", None),
     ("group_resubscribe", {"asm_group_id": 10}, None, None)],
)  # fmt: skip
def test_sendgrid_event_of_each_kind(kind: str, extra: dict[str, Any], url: str | None, reason: str | None) -> None:
    activity = sendgrid.translate(sendgrid_event(kind, **extra))
    assert (activity.vendor_event_id, activity.kind, activity.email) == (f"sg-{kind}-1", kind, "example@test.com")
    assert activity.message_id == "14c5d75ce93"  # sg_message_id = X-Message-Id + ".filter…"
    assert (activity.url, activity.reason) == (url, reason)
    assert activity.at == datetime.fromtimestamp(1513299569, UTC)


@pytest.mark.parametrize(("flag", "kind"), [(True, "machine_open"), ("true", "machine_open"), (False, "open"),
                                           (None, "open")])  # fmt: skip
def test_sendgrid_machine_opens_are_recorded_apart(flag: Any, kind: str) -> None:
    """sg_machine_open: Apple Mail Privacy Protection fetched the pixel; it is nobody's open."""
    extra = {} if flag is None else {"sg_machine_open": flag}
    assert sendgrid.translate(sendgrid_event("open", useragent="Mozilla/5.0", **extra)).kind == kind
    assert sendgrid.translate(sendgrid_event("click", sg_machine_open=True)).kind == "click"  # only opens are flagged


def test_sendgrid_bad_events_and_files() -> None:
    assert field_of(sendgrid.translate, sendgrid_event("opened")) == "event.event"
    assert field_of(sendgrid.translate, {k: v for k, v in sendgrid_event("open").items() if k != "sg_event_id"}) == (
        "event.sg_event_id")  # fmt: skip
    assert field_of(sendgrid.translate, {k: v for k, v in sendgrid_event("open").items() if k != "timestamp"}) == (
        "event.timestamp")  # fmt: skip
    assert field_of(sendgrid.translate, "open") == "event"
    assert sendgrid.translate({**sendgrid_event("open"), "sg_message_id": None}).message_id is None
    assert field_of(sendgrid.file_events, {"event": "open"}) == "file"  # the webhook posts a JSON array


def sendgrid_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, base64.b64encode(der).decode()


def sendgrid_headers(key: ec.EllipticCurvePrivateKey, stamp: str, body: bytes) -> dict[str, str]:
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
            "x-twilio-email-event-webhook-timestamp": stamp}  # fmt: skip


def test_sendgrid_webhook_signature() -> None:
    key, public = sendgrid_key()
    body, stamp = json.dumps([sendgrid_event("open")]).encode(), "1700000000"
    good = sendgrid_headers(key, stamp, body)
    assert sendgrid.verify_webhook(public, good, body, now=1700000010)
    other_key, other_public = sendgrid_key()
    assert not sendgrid.verify_webhook(other_public, good, body, now=1700000010)
    assert not sendgrid.verify_webhook(public, sendgrid_headers(other_key, stamp, body), body, now=1700000010)
    assert not sendgrid.verify_webhook(public, good, body.replace(b"open", b"click"), now=1700000010)
    resigned_stamp = {**good, "x-twilio-email-event-webhook-timestamp": "1700000001"}  # signature of another time
    assert not sendgrid.verify_webhook(public, resigned_stamp, body, now=1700000010)
    assert not sendgrid.verify_webhook(public, good, body, now=1700000000 + 301)  # stale: replay window is 300 s
    assert not sendgrid.verify_webhook(public, good, body, now=1700000000 - 301)
    assert sendgrid.verify_webhook(public, good, body, now=1700000000 + 299)
    assert not sendgrid.verify_webhook(public, {**good, "x-twilio-email-event-webhook-signature": "%%%"}, body,
                                       now=1700000010)  # fmt: skip
    assert not sendgrid.verify_webhook(public, sendgrid_headers(key, "17e8", body), body, now=1700000010)
    assert not sendgrid.verify_webhook("not base64 der", good, body, now=1700000010)
    assert not sendgrid.verify_webhook("", good, body, now=1700000010)
    ed_public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    assert not sendgrid.verify_webhook(base64.b64encode(ed_public).decode(), good, body, now=1700000010)


# ------------------------------------------------------------------------------------------- NPS
def test_nps_rows_and_answers() -> None:
    text = ("response_id,customer,email,score,comment,responded_at\n"
                            "r1,Acme,Ann@Acme.example,9,\"Love it, mostly\",2026-02-01T10:00:00Z\n"
                            "r2,,bo@initech.example,0,,1769940000\n")  # fmt: skip
    rows = list(nps.read_rows(io.StringIO(text)))
    assert [line for line, _ in rows] == [2, 3]
    first, second = (nps.translate(row) for _, row in rows)
    assert (first.response_id, first.customer_ref, first.email, first.score, first.comment) == (
        "r1", "Acme", "Ann@Acme.example", 9, "Love it, mostly")  # fmt: skip
    assert first.responded_at == utc("2026-02-01T10:00:00Z")
    assert (second.customer_ref, second.score, second.comment) == (None, 0, None)
    assert second.responded_at == datetime.fromtimestamp(1769940000, UTC)


@pytest.mark.parametrize(
    ("row", "field"),
    [({"score": "11"}, "score"), ({"score": "-1"}, "score"), ({"score": "7.5"}, "score"), ({"score": ""}, "score"),
     ({"response_id": " "}, "response_id"), ({"responded_at": "soon"}, "responded_at"),
     ({None: ["extra"]}, "row")],  # type: ignore[dict-item]
)  # fmt: skip
def test_nps_bad_answer_names_the_field(row: dict[Any, Any], field: str) -> None:
    good = {
        "response_id": "r1",
        "customer": "acme",
        "email": "",
        "score": "10",
        "comment": "",
        "responded_at": "2026-02-01",
    }
    assert field_of(nps.translate, {**good, **row}) == field


def test_nps_header_must_name_every_column() -> None:
    with pytest.raises(InvalidInputError, match="missing column.*score") as caught:
        list(nps.read_rows(io.StringIO("response_id,customer,email,comment,responded_at\n")))
    assert caught.value.field == "header"


# -------------------------------------------------------------------------------------- matching
class Directory:
    def __init__(self, sources: dict[tuple[str, str], UUID], domains: dict[str, UUID]) -> None:
        self.sources, self.domains = sources, domains

    def by_source(self, field: str, value: str) -> UUID | None:
        return self.sources.get((field, value.lower()))

    def by_domain(self, domain: str) -> UUID | None:
        return self.domains.get(domain.lower())


def test_matching_prefers_the_source_id_then_the_email_domain() -> None:
    acme, globex = uuid4(), uuid4()
    directory = Directory({("zendesk_org_id", "509974"): acme}, {"globex.example": globex})
    snap = zendesk.translate(ZENDESK_TICKET, {20978392: "ann@globex.example"})
    assert zendesk.match_ticket(directory, snap) == Match(acme, "zendesk_org_id=509974")
    other_org = zendesk.translate({**ZENDESK_TICKET, "organization_id": 1}, {20978392: "ann@GLOBEX.example"})
    assert zendesk.match_ticket(directory, other_org) == Match(globex, "domain=globex.example")
    nobody = zendesk.translate({**ZENDESK_TICKET, "organization_id": 1}, {20978392: "x@nowhere.example"})
    assert zendesk.match_ticket(directory, nobody) == Match(None, "unmatched: zendesk_org_id=1, domain=nowhere.example")
    assert match(directory) == Match(None, "unmatched: no source id or e-mail")
    answer = nps.translate({"response_id": "r", "customer": "", "email": "a@globex.example", "score": "5",
                            "comment": "", "responded_at": "2026-02-01"})  # fmt: skip
    assert nps.match_answer(directory, answer).customer_id == globex
    activity = sendgrid.translate(sendgrid_event("open", email="ann@globex.example"))
    assert sendgrid.match_recipient(directory, activity).customer_id == globex
    event = mixpanel.translate({"event": "x", "properties": {"time": 1, "distinct_id": "u", "account_id": "acct"}})
    assert mixpanel.match_account(directory, event.account, event.email).customer_id is None


@pytest.mark.parametrize(("email", "domain"), [("Ann@Acme.Example", "acme.example"), ("a@b.example.", "b.example"),
                                               ("no-at-sign", None), ("", None), (None, None), ("a@", None)])  # fmt: skip
def test_email_domain(email: str | None, domain: str | None) -> None:
    assert email_domain(email) == domain


def test_junk_signature_headers_are_a_mismatch_not_a_crash() -> None:
    """Header values arrive decoded as latin-1: non-ASCII text must fail verification (401), not
    raise (500); "²" passes str.isdigit() but int() rejects it."""
    body = b"{}"
    assert not zendesk.verify_webhook("s", {"x-zendesk-webhook-signature": "é",
                                            "x-zendesk-webhook-signature-timestamp": "2024-04-17T17:18:10Z"},
                                      body, now=utc("2024-04-17T17:18:10Z"))  # fmt: skip
    assert not intercom.verify_webhook("s", {"x-hub-signature": "sha1=é"}, body)
    _, public = sendgrid_key()
    junk = {"x-twilio-email-event-webhook-signature": "abc", "x-twilio-email-event-webhook-timestamp": "²"}
    assert not sendgrid.verify_webhook(public, junk, body, now=2)
    row = {"response_id": "r1", "customer": "", "email": "", "score": "²", "comment": "", "responded_at": "2026-02-01"}
    assert field_of(nps.translate, row) == "score"


def test_collector_paused_restores_the_collector_as_it_was_even_on_error() -> None:
    """A chunk's work runs with the cyclic collector off; it is on again after (also when the
    work raises), and a collector someone else turned off stays off."""
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("bad chunk")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_pauses_keep_the_collector_off_until_the_last_ends() -> None:
    """A pause that ends while another (here: another thread's) is still on leaves the collector
    off; it is on again once both ended, whichever ends first."""
    first_in, second_done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with collector_paused():
            first_in.set()
            second_done.wait(timeout=30)
            seen.append(gc.isenabled())  # the main thread's pause is over, this one is not
        seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    with collector_paused():
        thread.start()
        assert first_in.wait(timeout=30)
    assert not gc.isenabled()  # the other thread's pause is still on
    second_done.set()
    thread.join(timeout=30)
    assert seen == [False, True] and gc.isenabled()
