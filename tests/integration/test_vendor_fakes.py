"""The vendor fakes (tests/support/vendors) honour ../shared/VENDORS.md: paths, auth, pagination,
rate-limit headers, fault injection, and the webhook signatures. Driven with plain httpx."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.support.vendors import (
    IntercomFake,
    MixpanelFake,
    SendGridFake,
    SendGridSigner,
    VendorFake,
    ZendeskFake,
    intercom_conversation,
    intercom_notification,
    intercom_signature,
    mixpanel_event,
    sendgrid_event,
    serve_asgi,
    zendesk_signature,
    zendesk_ticket,
    zendesk_ticket_event,
    zendesk_webhook_headers,
)

ZENDESK_EXPORT = "/api/v2/incremental/tickets/cursor.json"
ZENDESK_AUTH = ("agent@example.com/token", "zendesk-api-token")
INTERCOM_HEADERS = {"Authorization": "Bearer intercom-access-token", "Intercom-Version": "2.11"}
MIXPANEL_AUTH = ("cs-export.sa", "mixpanel-service-secret")
SENDGRID_HEADERS = {"Authorization": "Bearer SG.fake-api-key"}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def client(fake: VendorFake, **options: Any) -> httpx.Client:
    """A client of ``fake`` that ignores proxy settings from the environment."""
    return httpx.Client(base_url=fake.base_url, trust_env=False, timeout=5.0, **options)


def search_body(since: int, per_page: int, starting_after: str | None = None) -> dict[str, Any]:
    pagination: dict[str, Any] = {"per_page": per_page}
    if starting_after is not None:
        pagination["starting_after"] = starting_after
    query = {"operator": "AND", "value": [{"field": "updated_at", "operator": ">", "value": since}]}
    return {"query": query, "pagination": pagination}


def valid_mail(**changes: Any) -> dict[str, Any]:
    mail = {
        "personalizations": [{"to": [{"email": "ana@acme.test"}]}],
        "from": {"email": "cs@vendor.test", "name": "Customer Success"},
        "subject": "Your renewal",
        "content": [{"type": "text/plain", "value": "Hello"}],
    }
    mail.update(changes)
    return mail


# --- the generic runner -----------------------------------------------------------------------


def test_serve_asgi_serves_any_app_on_loopback_and_stops_on_exit() -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    with serve_asgi(Starlette(routes=[Route("/", hello)])) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        assert httpx.get(base_url, trust_env=False).text == "hello"
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url, trust_env=False, timeout=1.0)


def test_a_fake_has_no_base_url_outside_its_context() -> None:
    fake = SendGridFake()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url


# --- Zendesk ------------------------------------------------------------------------------------


def test_zendesk_requires_basic_auth_with_the_token_username() -> None:
    with ZendeskFake() as zendesk, client(zendesk) as http:
        params = {"start_time": 0}
        assert http.get(ZENDESK_EXPORT, params=params).status_code == 401
        assert (
            http.get(ZENDESK_EXPORT, params=params, auth=("agent@example.com", "zendesk-api-token")).status_code == 401
        )
        bearer = {"Authorization": "Bearer zendesk-api-token"}
        assert http.get(ZENDESK_EXPORT, params=params, headers=bearer).status_code == 401
        assert http.get(ZENDESK_EXPORT, params=params, auth=ZENDESK_AUTH).status_code == 200


def test_zendesk_walk_follows_after_url_to_end_of_stream_and_returns_each_ticket_once() -> None:
    stamps = [50, 10, 30, 10, 20, 40, 30]  # ties on generated_timestamp are ordered by id
    tickets = [zendesk_ticket(i + 1, 509974, generated_timestamp=ts) for i, ts in enumerate(stamps)]
    with ZendeskFake(tickets=tickets, page_size=3) as zendesk, client(zendesk, auth=ZENDESK_AUTH) as http:
        page = http.get(ZENDESK_EXPORT, params={"start_time": 0})
        pages = [page]
        while not page.json()["end_of_stream"]:
            after_url = page.json()["after_url"]
            assert after_url.startswith(zendesk.base_url + ZENDESK_EXPORT + "?cursor=")
            page = http.get(after_url)
            pages.append(page)
        requests = zendesk.requests_to()

    seen = [(t["generated_timestamp"], t["id"]) for p in pages for t in p.json()["tickets"]]
    assert seen == sorted((ts, i + 1) for i, ts in enumerate(stamps))
    assert [len(p.json()["tickets"]) for p in pages] == [3, 3, 1]
    assert requests[0].query == {"start_time": "0"}
    assert all(set(r.query) == {"cursor"} for r in requests[1:])
    body = pages[1].json()
    assert set(body) == {"tickets", "after_url", "after_cursor", "before_url", "before_cursor", "end_of_stream"}
    assert json.loads(base64.urlsafe_b64decode(body["after_cursor"]))  # opaque base64 of a position
    remaining = [int(p.headers["X-Rate-Limit-Remaining"]) for p in pages]
    assert all(p.headers["X-Rate-Limit"] == "700" for p in pages) and remaining == sorted(remaining, reverse=True)


def test_zendesk_saved_cursor_redelivers_updated_tickets_and_new_ones() -> None:
    tickets = [zendesk_ticket(i, 509974, updated_at=T0 + timedelta(minutes=i)) for i in (1, 2, 3)]
    with ZendeskFake(tickets=tickets, page_size=10) as zendesk, client(zendesk, auth=ZENDESK_AUTH) as http:
        first = http.get(ZENDESK_EXPORT, params={"start_time": int(T0.timestamp())}).json()
        assert first["end_of_stream"] and [t["id"] for t in first["tickets"]] == [1, 2, 3]
        idle = http.get(ZENDESK_EXPORT, params={"cursor": first["after_cursor"]}).json()
        assert idle["tickets"] == [] and idle["end_of_stream"] and idle["after_cursor"] == first["after_cursor"]

        zendesk.tickets.append(
            zendesk_ticket(1, 509974, status="solved", csat="bad", updated_at=T0 + timedelta(hours=1))
        )
        zendesk.tickets.append(zendesk_ticket(4, 509974, updated_at=T0 + timedelta(minutes=30)))
        later = http.get(first["after_url"]).json()
        assert [(t["id"], t["status"]) for t in later["tickets"]] == [(4, "open"), (1, "solved")]
        assert later["tickets"][1]["satisfaction_rating"]["score"] == "bad"

        fresh = http.get(ZENDESK_EXPORT, params={"start_time": 0}).json()
        assert [t["id"] for t in fresh["tickets"]] == [2, 3, 4, 1]  # the latest version of each, once


def test_zendesk_start_time_selects_by_generated_timestamp_and_before_cursor_goes_back() -> None:
    tickets = [zendesk_ticket(i, 7, generated_timestamp=100 * i) for i in range(1, 6)]
    with ZendeskFake(tickets=tickets, page_size=2) as zendesk, client(zendesk, auth=ZENDESK_AUTH) as http:
        page = http.get(ZENDESK_EXPORT, params={"start_time": 300}).json()
        assert [t["id"] for t in page["tickets"]] == [3, 4] and not page["end_of_stream"]
        back = http.get(page["before_url"]).json()
        assert [t["id"] for t in back["tickets"]] == [1, 2]
        assert http.get(ZENDESK_EXPORT).status_code == 400
        assert http.get(ZENDESK_EXPORT, params={"cursor": "not-a-cursor"}).json()["error"] == "InvalidValue"


def test_zendesk_ticket_has_the_documented_shape() -> None:
    ticket = zendesk_ticket(
        35436,
        509974,
        status="pending",
        priority="high",
        subject="Printer on fire",
        updated_at=T0,
        csat="good",
        csat_comment="Great support!",
    )
    assert ticket["updated_at"] == "2026-03-01T12:00:00Z" and ticket["generated_timestamp"] == int(T0.timestamp())
    assert (
        ticket["satisfaction_rating"]["score"] == "good"
        and ticket["satisfaction_rating"]["comment"] == "Great support!"
    )
    assert {
        "id",
        "status",
        "priority",
        "subject",
        "requester_id",
        "organization_id",
        "created_at",
        "via",
        "satisfaction_rating",
    } <= ticket.keys()
    assert zendesk_ticket(1, None)["satisfaction_rating"] == {"score": "unoffered"}


# --- Intercom -----------------------------------------------------------------------------------


def test_intercom_requires_a_bearer_token_and_accepts_any_version() -> None:
    with IntercomFake() as intercom, client(intercom) as http:
        body = search_body(0, 5)
        denied = http.post("/conversations/search", json=body)
        assert denied.status_code == 401 and denied.json()["errors"][0]["code"] == "unauthorized"
        wrong = {"Authorization": "Bearer nope"}
        assert http.post("/conversations/search", json=body, headers=wrong).status_code == 401
        other_version = {**INTERCOM_HEADERS, "Intercom-Version": "Unstable"}
        assert http.post("/conversations/search", json=body, headers=other_version).status_code == 200
        assert intercom.requests[-1].headers["intercom-version"] == "Unstable"


def test_intercom_search_walk_reads_the_cursor_from_the_body_and_returns_each_conversation_once() -> None:
    updated = [T0 + timedelta(minutes=m) for m in (5, 1, 3, 9, 7, 2, 8)]
    conversations = [intercom_conversation(100 + i, f"u{i}@acme.test", updated_at=u) for i, u in enumerate(updated)]
    since = int((T0 + timedelta(minutes=1)).timestamp())  # excludes the conversation updated at minute 1
    with IntercomFake(conversations=conversations) as intercom, client(intercom, headers=INTERCOM_HEADERS) as http:
        response = http.post("/conversations/search", json=search_body(since, 2))
        pages = [response.json()]
        while "next" in pages[-1]["pages"]:
            cursor = pages[-1]["pages"]["next"]["starting_after"]
            pages.append(http.post("/conversations/search", json=search_body(since, 2, cursor)).json())
        bodies = [r.json() for r in intercom.requests_to()]

    ids = [c["id"] for p in pages for c in p["conversations"]]
    assert ids == ["105", "102", "100", "104", "106", "103"]  # by updated_at
    assert [p["pages"]["page"] for p in pages] == [1, 2, 3]
    assert all(p["type"] == "conversation.list" and p["total_count"] == 6 for p in pages)
    assert all(p["pages"]["total_pages"] == 3 and p["pages"]["per_page"] == 2 for p in pages)
    assert [b["pagination"].get("starting_after") for b in bodies] == [
        None,
        pages[0]["pages"]["next"]["starting_after"],
        pages[1]["pages"]["next"]["starting_after"],
    ]
    for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert response.headers[header].isdigit()
    assert int(response.headers["X-RateLimit-Reset"]) >= time.time()


def test_intercom_ignores_a_cursor_in_the_query_string() -> None:
    conversations = [intercom_conversation(i, "a@acme.test", updated_at=T0 + timedelta(minutes=i)) for i in range(1, 6)]
    with IntercomFake(conversations=conversations) as intercom, client(intercom, headers=INTERCOM_HEADERS) as http:
        first = http.post("/conversations/search", json=search_body(0, 2)).json()
        cursor = first["pages"]["next"]["starting_after"]
        again = http.post("/conversations/search", params={"starting_after": cursor}, json=search_body(0, 2)).json()
        following = http.post("/conversations/search", json=search_body(0, 2, cursor)).json()
    assert again == first
    assert [c["id"] for c in following["conversations"]] == ["3", "4"]


def test_intercom_search_filters_and_rejects_bad_bodies() -> None:
    conversations = [
        intercom_conversation(1, "a@acme.test", state="closed"),
        intercom_conversation(2, "b@globex.test", state="open"),
        intercom_conversation(3, "c@acme.test", state="snoozed"),
    ]
    with IntercomFake(conversations=conversations) as intercom, client(intercom, headers=INTERCOM_HEADERS) as http:
        either = {
            "operator": "OR",
            "value": [
                {"field": "state", "operator": "=", "value": "closed"},
                {"field": "source.author.email", "operator": "=", "value": "b@globex.test"},
            ],
        }
        found = http.post("/conversations/search", json={"query": either}).json()
        assert sorted(c["id"] for c in found["conversations"]) == ["1", "2"]
        assert found["pages"]["per_page"] == 20 and "next" not in found["pages"]
        for bad in (
            b"not json",
            b"{}",
            json.dumps(search_body(0, 151)).encode(),
            json.dumps({"query": {"field": "state", "operator": "LIKE", "value": "x"}}).encode(),
        ):
            rejected = http.post("/conversations/search", content=bad)
            assert rejected.status_code == 400 and rejected.json()["errors"][0]["code"] == "parameter_invalid"


def test_intercom_conversation_has_the_documented_shape_and_links_to_a_company() -> None:
    conversation = intercom_conversation(
        1295,
        "ana@acme.test",
        state="closed",
        priority="priority",
        created_at=T0,
        updated_at=T0 + timedelta(hours=2),
        rating=4,
        remark="quick",
        company_id="acme",
    )
    assert conversation["id"] == "1295" and conversation["updated_at"] - conversation["created_at"] == 7200
    assert conversation["state"] == "closed" and conversation["open"] is False
    assert conversation["source"]["author"]["email"] == "ana@acme.test"
    assert conversation["contacts"]["contacts"][0]["id"] == conversation["source"]["author"]["id"]
    assert (
        conversation["conversation_rating"]["rating"] == 4 and conversation["conversation_rating"]["remark"] == "quick"
    )
    assert conversation["custom_attributes"] == {"company_id": "acme"}
    assert conversation["statistics"]["time_to_first_close"] == 7200
    assert intercom_conversation(1, "b@acme.test")["conversation_rating"] is None


# --- Mixpanel -----------------------------------------------------------------------------------


def test_mixpanel_requires_basic_auth_and_project_id_and_can_be_throttled() -> None:
    params = {"project_id": "2195193", "from_date": "2026-03-01", "to_date": "2026-03-01"}
    with MixpanelFake() as mixpanel, client(mixpanel) as http:
        assert http.get("/api/2.0/export", params=params).status_code == 401
        missing = http.get("/api/2.0/export", params={**params, "project_id": ""}, auth=MIXPANEL_AUTH)
        assert missing.status_code == 400 and "project_id" in missing.json()["error"]
        assert http.get("/api/2.0/export", params={**params, "project_id": "1"}, auth=MIXPANEL_AUTH).status_code == 403
        no_dates = {"project_id": "2195193"}
        assert http.get("/api/2.0/export", params=no_dates, auth=MIXPANEL_AUTH).status_code == 400
        assert http.get("/api/2.0/export", params=params, auth=MIXPANEL_AUTH).status_code == 200
        mixpanel.fail_next(status=429)
        throttled = http.get("/api/2.0/export", params=params, auth=MIXPANEL_AUTH)
        assert throttled.status_code == 429 and throttled.json()["status"] == "error"


def test_mixpanel_export_is_gzip_jsonl_of_the_utc_days_requested() -> None:
    events = [
        mixpanel_event("Login", "acme", "u1", datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC)),
        mixpanel_event("Login", "acme", "u1", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        mixpanel_event("Report Run", "globex", "u2", datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC)),
        mixpanel_event("Login", "acme", "u3", datetime(2026, 3, 3, 0, 0, tzinfo=UTC)),
    ]
    params = {"project_id": "2195193", "from_date": "2026-03-01", "to_date": "2026-03-02"}
    with MixpanelFake(events=events) as mixpanel, client(mixpanel, auth=MIXPANEL_AUTH) as http:
        with http.stream("GET", "/api/2.0/export", params=params, headers={"Accept-Encoding": "gzip"}) as response:
            raw = b"".join(response.iter_raw())
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Type"].startswith("text/plain")
        plain = http.get("/api/2.0/export", params=params, headers={"Accept-Encoding": "identity"})
        some = http.get("/api/2.0/export", params={**params, "event": '["Login"]', "limit": "5"})

    lines = gzip.decompress(raw).decode().splitlines()
    assert [json.loads(line) for line in lines] == events[1:3]
    assert "Content-Encoding" not in plain.headers and plain.text.splitlines() == lines
    assert [json.loads(line)["properties"]["distinct_id"] for line in some.text.splitlines()] == ["u1"]


def test_mixpanel_event_has_the_documented_shape() -> None:
    event = mixpanel_event("Signed Up", "acme", "user123", T0)
    properties = event["properties"]
    assert event["event"] == "Signed Up" and properties["time"] == int(T0.timestamp())
    assert properties["distinct_id"] == "user123" and properties["account_id"] == "acme"
    assert properties["mp_processing_time_ms"] > properties["time"] * 1000
    assert properties["$insert_id"] == mixpanel_event("Signed Up", "acme", "user123", T0)["properties"]["$insert_id"]
    assert mixpanel_event("x", "a", "u", T0, insert_id="given")["properties"]["$insert_id"] == "given"


# --- SendGrid -----------------------------------------------------------------------------------


def test_sendgrid_requires_a_bearer_api_key() -> None:
    with SendGridFake() as sendgrid, client(sendgrid) as http:
        denied = http.post("/v3/mail/send", json=valid_mail(), headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.json()["errors"][0]["message"]
        assert sendgrid.sent == []


def test_sendgrid_accepts_a_valid_mail_with_202_and_a_message_id() -> None:
    with SendGridFake() as sendgrid, client(sendgrid, headers=SENDGRID_HEADERS) as http:
        accepted = http.post("/v3/mail/send", json=valid_mail())
        second = http.post("/v3/mail/send", json=valid_mail(subject="Again"))
    assert accepted.status_code == 202 and accepted.content == b""
    assert [mail.message_id for mail in sendgrid.sent] == [
        accepted.headers["X-Message-Id"],
        second.headers["X-Message-Id"],
    ]
    assert accepted.headers["X-Message-Id"] != second.headers["X-Message-Id"]
    assert sendgrid.sent[0].body == valid_mail()
    assert accepted.headers["X-RateLimit-Remaining"].isdigit()


def test_sendgrid_rejects_a_bad_body_naming_each_field() -> None:
    bad = valid_mail(personalizations=[{"to": [{"email": "not-an-address"}]}], content=[])
    del bad["from"]
    with SendGridFake() as sendgrid, client(sendgrid, headers=SENDGRID_HEADERS) as http:
        rejected = http.post("/v3/mail/send", json=bad)
        no_json = http.post("/v3/mail/send", content=b"[1, 2")
        templated = http.post("/v3/mail/send", json=valid_mail(subject=None, content=None, template_id="d-123"))
    assert rejected.status_code == 400
    fields = {error["field"] for error in rejected.json()["errors"]}
    assert fields == {"personalizations.0.to.0.email", "from.email", "content"}
    assert no_json.status_code == 400 and no_json.json()["errors"]
    assert templated.status_code == 202
    assert len(sendgrid.sent) == 1


# --- fault injection (shared by every fake) ------------------------------------------------------


def test_injected_429_carries_retry_after_and_then_the_next_request_succeeds() -> None:
    with ZendeskFake() as zendesk, client(zendesk, auth=ZENDESK_AUTH) as http:
        zendesk.fail_next(status=429, headers={"Retry-After": "1"})
        throttled = http.get(ZENDESK_EXPORT, params={"start_time": 0})
        after = http.get(ZENDESK_EXPORT, params={"start_time": 0})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert throttled.headers["X-Rate-Limit-Remaining"] == "0"
    assert after.status_code == 200
    assert len(zendesk.requests) == 2  # a faulted request is recorded too


def test_injected_429_on_intercom_carries_the_reset_header_and_error_code() -> None:
    with IntercomFake() as intercom, client(intercom, headers=INTERCOM_HEADERS) as http:
        intercom.fail_next(status=429)
        throttled = http.post("/conversations/search", json=search_body(0, 5))
    assert throttled.status_code == 429 and throttled.json()["errors"][0]["code"] == "rate_limit_exceeded"
    assert throttled.headers["X-RateLimit-Remaining"] == "0"
    assert time.time() - 1 <= int(throttled.headers["X-RateLimit-Reset"]) <= time.time() + 1  # retry soon


def test_injected_503_three_times_then_success() -> None:
    with IntercomFake() as intercom, client(intercom, headers=INTERCOM_HEADERS) as http:
        intercom.fail_next(status=503, times=3)
        statuses = [http.post("/conversations/search", json=search_body(0, 5)).status_code for _ in range(4)]
    assert statuses == [503, 503, 503, 200]


def test_injected_malformed_body_is_a_200_with_truncated_json() -> None:
    tickets = [zendesk_ticket(i, 1) for i in range(1, 4)]
    with ZendeskFake(tickets=tickets) as zendesk, client(zendesk, auth=ZENDESK_AUTH) as http:
        zendesk.fail_next(malformed=True)
        broken = http.get(ZENDESK_EXPORT, params={"start_time": 0})
        whole = http.get(ZENDESK_EXPORT, params={"start_time": 0})
    assert broken.status_code == 200 and broken.headers["Content-Type"] == "application/json"
    assert whole.text.startswith(broken.text) and len(broken.text) < len(whole.text)
    with pytest.raises(json.JSONDecodeError):
        broken.json()


def test_injected_malformed_mixpanel_export_ends_in_a_partial_line() -> None:
    events = [mixpanel_event("Login", "acme", f"u{i}", T0 + timedelta(minutes=i)) for i in range(4)]
    params = {"project_id": "2195193", "from_date": "2026-03-01", "to_date": "2026-03-01"}
    with MixpanelFake(events=events) as mixpanel, client(mixpanel, auth=MIXPANEL_AUTH) as http:
        mixpanel.fail_next(malformed=True)
        broken = http.get("/api/2.0/export", params=params, headers={"Accept-Encoding": "identity"})
    *complete, partial = broken.text.split("\n")
    assert broken.status_code == 200 and complete and partial
    assert [json.loads(line) for line in complete] == events[: len(complete)]
    with pytest.raises(json.JSONDecodeError):
        json.loads(partial)


def test_injected_delay_holds_the_answer_and_a_short_client_timeout_fires() -> None:
    with SendGridFake() as sendgrid, client(sendgrid, headers=SENDGRID_HEADERS) as http:
        sendgrid.fail_next(delay=0.4)
        started = time.monotonic()
        slow = http.post("/v3/mail/send", json=valid_mail())
        assert slow.status_code == 202 and time.monotonic() - started >= 0.4
        sendgrid.fail_next(delay=1.0)
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v3/mail/send", json=valid_mail(), timeout=0.2)


@pytest.mark.anyio
async def test_a_delayed_request_does_not_hold_up_others() -> None:
    with MixpanelFake() as mixpanel:
        mixpanel.fail_next(delay=0.5)
        params = {"project_id": "2195193", "from_date": "2026-03-01", "to_date": "2026-03-01"}
        finished: list[str] = []
        async with httpx.AsyncClient(base_url=mixpanel.base_url, auth=MIXPANEL_AUTH, trust_env=False) as http:

            async def fetch(label: str) -> None:
                response = await http.get("/api/2.0/export", params=params)
                assert response.status_code == 200
                finished.append(label)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(fetch, "delayed")
                await anyio.sleep(0.1)  # the delayed request takes the fault first
                tasks.start_soon(fetch, "prompt")
    assert finished == ["prompt", "delayed"]


def test_faults_are_queued_per_path_and_unrouted_requests_are_logged() -> None:
    with SendGridFake() as sendgrid, client(sendgrid, headers=SENDGRID_HEADERS) as http:
        sendgrid.fail_next(status=500, path="/v3/other")
        assert http.post("/v3/mail/send", json=valid_mail()).status_code == 202
        assert http.post("/v3/other").status_code == 500
        assert http.post("/v3/other").status_code == 404
        assert http.get("/v3/mail/send").status_code == 405
        with pytest.raises(ValueError):
            sendgrid.fail_next()
    assert [(r.method, r.path) for r in sendgrid.requests] == [
        ("POST", "/v3/mail/send"),
        ("POST", "/v3/other"),
        ("POST", "/v3/other"),
        ("GET", "/v3/mail/send"),
    ]
    assert sendgrid.requests[0].json() == valid_mail()
    assert sendgrid.requests[0].headers["authorization"] == "Bearer SG.fake-api-key"


# --- webhook signatures and payloads -------------------------------------------------------------


def test_zendesk_signature_is_base64_hmac_sha256_of_timestamp_and_body() -> None:
    body = json.dumps(zendesk_ticket_event(zendesk_ticket(35436, 509974))).encode()
    timestamp = "2024-04-17T17:18:10Z"
    expected = hmac.new(b"webhook-secret", timestamp.encode() + body, hashlib.sha256).digest()
    assert base64.b64decode(zendesk_signature("webhook-secret", timestamp, body)) == expected
    headers = zendesk_webhook_headers("webhook-secret", body, timestamp_iso=timestamp)
    assert headers["X-Zendesk-Webhook-Signature-Timestamp"] == timestamp
    assert headers["X-Zendesk-Webhook-Signature"] == zendesk_signature("webhook-secret", timestamp, body)
    assert zendesk_signature("other-secret", timestamp, body) != headers["X-Zendesk-Webhook-Signature"]


def test_intercom_signature_is_sha1_prefixed_hex_hmac() -> None:
    body = json.dumps(
        intercom_notification("conversation.admin.closed", intercom_conversation(1295, "a@acme.test"))
    ).encode()
    expected = hmac.new(b"client-secret", body, hashlib.sha1).hexdigest()
    assert hmac.compare_digest(intercom_signature("client-secret", body), "sha1=" + expected)


def test_sendgrid_signer_verifies_with_the_published_public_key() -> None:
    signer = SendGridSigner()
    body = json.dumps([sendgrid_event("delivered", "ana@acme.test", "msg-1", timestamp=T0)]).encode()
    timestamp = str(int(T0.timestamp()))
    headers = signer.headers(body, timestamp=timestamp)
    key = load_der_public_key(base64.b64decode(signer.public_key_b64))
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    signature = base64.b64decode(headers["X-Twilio-Email-Event-Webhook-Signature"])
    key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(signature, timestamp.encode() + body + b" ", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(
            base64.b64decode(signer.sign(str(int(T0.timestamp()) + 1), body)),
            timestamp.encode() + body,
            ec.ECDSA(hashes.SHA256()),
        )


def test_zendesk_ticket_event_payload_follows_the_event_subscription_shape() -> None:
    ticket = zendesk_ticket(35436, 509974, status="open", updated_at=T0)
    event = zendesk_ticket_event(ticket)
    assert event["type"] == "zen:event-type:ticket.created" and event["subject"] == "zen:ticket:35436"
    assert event["detail"]["id"] == "35436" and event["detail"]["organization_id"] == "509974"
    assert event["detail"]["status"] == "Open" and event["event"]["current"] == {"status": "Open"}
    assert event["time"] == "2026-03-01T12:00:00Z" and event["zendesk_event_version"] == "2022-11-06"
    assert (
        event["id"]
        == zendesk_ticket_event(ticket)["id"]
        != zendesk_ticket_event(ticket, event_type="ticket.status_changed")["id"]
    )


def test_intercom_notification_carries_the_conversation_item() -> None:
    conversation = intercom_conversation(1295, "ana@acme.test", updated_at=T0)
    notification = intercom_notification("conversation.admin.closed", conversation)
    assert notification["type"] == "notification_event" and notification["id"].startswith("notif_")
    assert notification["data"] == {"type": "notification_event_data", "item": conversation}
    assert notification["created_at"] == int(T0.timestamp())


def test_sendgrid_events_correlate_with_the_message_id_and_have_unique_event_ids() -> None:
    events = [
        sendgrid_event(
            kind,
            "ana@acme.test",
            "Xuf4eNe0SdCqQeMUf1mU3Q",
            timestamp=T0,
            category=["renewal"],
            custom_args={"customer_id": "acme"},
        )
        for kind in ("processed", "delivered", "open", "click", "bounce")
    ]
    assert len({e["sg_event_id"] for e in events}) == len(events)
    assert all(e["sg_message_id"].split(".")[0] == "Xuf4eNe0SdCqQeMUf1mU3Q" for e in events)
    assert events[4]["status"] == "5.0.0" and events[4]["type"] == "bounce"
    assert all(e["customer_id"] == "acme" and e["category"] == ["renewal"] for e in events)
    assert sendgrid_event("dropped", "b@acme.test", "m", timestamp=T0, reason="Spam")["reason"] == "Spam"
    with pytest.raises(ValueError):
        sendgrid_event("exploded", "b@acme.test", "m", timestamp=T0)
