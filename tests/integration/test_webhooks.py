"""Vendor webhooks over real HTTP: `build_http_app` served by uvicorn on 127.0.0.1 (its lifespan
opens the services and runs the projections), deliveries signed the way Zendesk, Intercom and
SendGrid sign them, on both backends. Also /healthz, /metrics, and the bearer token on /mcp
(the refusal of a public bind without a token is in tests/e2e/test_cli_connectors.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from events.settings import Settings
from connectors.service import Ingestion, PreparedWebhook
from mcp_server.http import MAX_WEBHOOK_BYTES, WebhookReceiver, WebhookRoute, build_http_app
from mcp_server.services import Services, open_services
from projections.profile import CustomerDirectory
from tests.support.connectors import ACME, GLOBEX, register_customers
from tests.support.vendors import (
    SendGridSigner,
    intercom_conversation,
    intercom_notification,
    intercom_signature,
    sendgrid_event,
    serve_asgi,
    zendesk_ticket,
    zendesk_ticket_event,
    zendesk_time,
    zendesk_webhook_headers,
)

ZENDESK_SECRET = "zendesk-webhook-signing-secret"
INTERCOM_SECRET = "intercom-client-secret"
SIGNER = SendGridSigner()
STALE = timedelta(minutes=10)  # the receivers accept 5 minutes of clock skew


def webhook_settings(settings: Settings) -> Settings:
    return replace(settings, vendor={
        "CS_ZENDESK_WEBHOOK_SECRET": ZENDESK_SECRET,
        "CS_INTERCOM_CLIENT_SECRET": INTERCOM_SECRET,
        "CS_SENDGRID_WEBHOOK_PUBLIC_KEY": SIGNER.public_key_b64,
    })  # fmt: skip


# ---------------------------------------------------------------------- deliveries per vendor
Signer = Callable[[bytes, datetime], dict[str, str]]


@dataclass
class Case:
    vendor: str
    valid: Callable[[datetime], Any]  # a delivery about a known customer
    unmatched: Callable[[datetime], Any]  # a delivery about nobody we know
    sign: Signer
    forge: Signer  # a signature made with the wrong secret / key
    stale: bool  # the scheme signs a timestamp
    table: str
    key: str  # the view column holding the vendor's id
    expected: dict[str, str | None]  # vendor id -> customer id, after the valid + unmatched deliveries

    def __str__(self) -> str:
        return self.vendor


def _zendesk(secret: str) -> Signer:
    return lambda body, at: zendesk_webhook_headers(secret, body, timestamp_iso=zendesk_time(at))


def _intercom(secret: str) -> Signer:
    return lambda body, at: {"Content-Type": "application/json", "X-Hub-Signature": intercom_signature(secret, body)}


def _sendgrid(signer: SendGridSigner) -> Signer:
    return lambda body, at: signer.headers(body, timestamp=str(int(at.timestamp())))


CASES = [
    Case("zendesk",
         valid=lambda at: zendesk_ticket_event(zendesk_ticket(501, 509974, updated_at=at, status="solved")),
         unmatched=lambda at: zendesk_ticket_event(zendesk_ticket(502, 999999, updated_at=at)),
         sign=_zendesk(ZENDESK_SECRET), forge=_zendesk("not-the-secret"), stale=True,
         table="cs_tickets_v1", key="vendor_id", expected={"501": ACME, "502": None}),
    Case("intercom",
         valid=lambda at: intercom_notification("conversation.admin.closed", intercom_conversation(
             "7001", "ann@globex.example", state="closed", created_at=at - timedelta(hours=1), updated_at=at, rating=5)),
         unmatched=lambda at: intercom_notification("conversation.user.created", intercom_conversation(
             "7002", "who@nowhere.example", created_at=at, updated_at=at)),
         sign=_intercom(INTERCOM_SECRET), forge=_intercom("not-the-secret"), stale=False,
         table="cs_tickets_v1", key="vendor_id", expected={"7001": GLOBEX, "7002": None}),
    Case("sendgrid",
         valid=lambda at: [sendgrid_event("delivered", "ann@acme.example", "msg-1", timestamp=at),
                           sendgrid_event("open", "ann@acme.example", "msg-1", timestamp=at + timedelta(seconds=5))],
         unmatched=lambda at: [sendgrid_event("bounce", "who@nowhere.example", "msg-2", timestamp=at)],
         sign=_sendgrid(SIGNER), forge=_sendgrid(SendGridSigner()), stale=True,
         table="cs_email_events_v1", key="kind", expected={"delivered": ACME, "open": ACME, "bounce": None}),
]  # fmt: skip


@contextmanager
def running_server(settings: Settings) -> Iterator[tuple[httpx.Client, Services]]:
    """The HTTP app on a free loopback port (it owns the projections, as `cs serve --http` does),
    an HTTP client for it (its base URL is the server's), and a reader of the same store that
    runs no projection."""
    with open_services(settings) as svc:
        register_customers(svc)
    with (
        serve_asgi(build_http_app(settings), name="cs-http", lifespan="on") as url,
        httpx.Client(base_url=url, trust_env=False, timeout=10.0) as http,
        open_services(settings, run_projections=False) as reader,
    ):
        yield http, reader


def post(http: httpx.Client, vendor: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http.post(f"/webhooks/{vendor}", content=body, headers=headers)


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_webhook_deliveries_are_verified_and_recorded_once(settings: Settings, case: Case) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with running_server(webhook_settings(settings)) as (http, reader):
        position = reader.app.last_position()
        body = encode(case.valid(now))

        first = post(http, case.vendor, body, case.sign(body, now))
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "recorded" and first.json()["recorded"] >= 1
        assert reader.app.last_position() > position
        position = reader.app.last_position()

        again = post(http, case.vendor, body, case.sign(body, datetime.now(UTC)))  # the vendor retries
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "duplicate" and again.json()["recorded"] == 0
        assert reader.app.last_position() == position

        forged = post(http, case.vendor, body, case.forge(body, now))
        assert forged.status_code == 401
        tampered = post(http, case.vendor, body + b" ", case.sign(body, now))  # signed, then altered
        assert tampered.status_code == 401
        unsigned = post(http, case.vendor, body, {"Content-Type": "application/json"})
        assert unsigned.status_code == 401
        if case.stale:
            old = now - STALE
            stale = post(http, case.vendor, body, case.sign(body, old))
            assert stale.status_code == 401, "a validly signed but stale delivery must be refused (replay)"
        broken = body[: len(body) // 2]
        malformed = post(http, case.vendor, broken, case.sign(broken, now))
        assert malformed.status_code == 400
        # JSON as RFC 8259 defines it, in UTF-8: Python's own extensions are not accepted either.
        for lax in (body.replace(b"}", b',"x":NaN}', 1), body.decode().encode("utf-16-le")):
            refused = post(http, case.vendor, lax, case.sign(lax, now))
            assert (refused.status_code, refused.json()) == (400, {"status": "body is not JSON"})
        assert reader.app.last_position() == position  # none of those recorded anything

        # A delivery about nobody we know, delivered four times at once: recorded once, kept, counted.
        other = encode(case.unmatched(now))
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(http, case.vendor, other, case.sign(other, now)), range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        assert sorted(a.json()["status"] for a in answers) == ["duplicate"] * 3 + ["recorded"]
        (kept,) = [a for a in answers if a.json()["status"] == "recorded"]
        assert kept.json()["unmatched"] == kept.json()["recorded"] >= 1  # kept, counted, not an error

        reader.engine.ensure_current()  # the server's projection thread folds the deliveries
        with reader.store.snapshot() as tx:
            found = tx.fetchall(f"SELECT {case.key} AS k, customer_id FROM {case.table}")
        assert len(found) == len(case.expected)  # one row per vendor record, however often delivered
        assert {r["k"]: r["customer_id"] for r in found} == case.expected

        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        counted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in metrics.text.splitlines() if line.startswith("cs_webhook_deliveries_total{")}  # fmt: skip
        expected_401 = 4 if case.stale else 3
        assert counted == {
            f'cs_webhook_deliveries_total{{outcome="200",vendor="{case.vendor}"}}': 6.0,
            f'cs_webhook_deliveries_total{{outcome="401",vendor="{case.vendor}"}}': float(expected_401),
            f'cs_webhook_deliveries_total{{outcome="400",vendor="{case.vendor}"}}': 3.0,
        }


def test_mcp_over_http_needs_the_bearer_token_when_one_is_set(settings: Settings) -> None:
    token = "http-token-for-tests"
    with running_server(replace(settings, http_token=token)) as (http, _):
        bare = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
        wrong = http.post("/mcp", json={}, headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 401
        assert http.get("/healthz").status_code == 200  # only /mcp is behind the token
        url = str(http.base_url.join("/mcp"))

        async def with_token() -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers, trust_env=False, timeout=10.0) as client,
                Client(streamable_http_client(url, http_client=client)) as mcp,
            ):
                result = await mcp.call_tool("get_sync_status", {})
            assert not result.is_error and result.structured_content is not None
            return result.structured_content

        status = anyio.run(with_token)
        assert {c["vendor"] for c in status["connectors"]} >= {"zendesk", "intercom", "sendgrid"}


def test_a_bad_sendgrid_event_is_rejected_alone(settings: Settings) -> None:
    """SendGrid retries a failed delivery and finally drops it: one bad event must not cost the
    good ones beside it. The delivery is answered 200, names the rejected event, records the rest."""
    settings = webhook_settings(settings)
    at = datetime.now(UTC)
    events = [sendgrid_event("delivered", "ann@acme.example", "msg-9", timestamp=at),
              {"event": "open", "email": "ann@acme.example", "timestamp": int(at.timestamp())},  # no sg_event_id
              sendgrid_event("click", "ann@acme.example", "msg-9", timestamp=at, url="https://x.example")]  # fmt: skip
    with running_server(settings) as (http, reader):
        head = reader.app.last_position()
        body = encode(events)
        answer = post(http, "sendgrid", body, SIGNER.headers(body, timestamp=str(int(at.timestamp()))))
        assert answer.status_code == 200
        assert "rejected 1" in answer.json()["status"] and "sg_event_id" in answer.json()["status"]
        assert answer.json()["recorded"] == 2
        assert reader.app.last_position() > head

        only_bad = encode([events[1]])
        refused = post(http, "sendgrid", only_bad, SIGNER.headers(only_bad, timestamp=str(int(at.timestamp()))))
        assert refused.status_code == 400


# ---------------------------------------------------------------------- bursts (group commit)
BURST_TICKETS = 24  # distinct valid tickets in the burst
COPIES = 3  # each delivered this many times inside the burst


def _ticket_body(ticket_id: int, org: int, at: datetime) -> bytes:
    return encode(zendesk_ticket_event(zendesk_ticket(ticket_id, org, updated_at=at, subject=f"Burst {ticket_id}")))


def _ticket_events(reader: Services, after: int) -> dict[str, list[str]]:
    """Ticket id -> topics of the events stored after position ``after``, in log order."""
    by_ticket: dict[str, list[str]] = {}
    with reader.store.snapshot() as tx:
        tickets = {r["ticket_id"]: r["vendor_id"] for r in tx.fetchall("SELECT ticket_id, vendor_id FROM cs_tickets_v1")}
    for notification in reader.app.recorder.select_notifications(start=after, limit=10_000, inclusive_of_start=False):
        vendor_id = tickets.get(str(notification.originator_id), str(notification.originator_id))
        by_ticket.setdefault(vendor_id, []).append(notification.topic.rsplit(".", 1)[-1])
    return by_ticket


def test_a_concurrent_burst_is_answered_one_by_one_and_recorded_once(settings: Settings) -> None:
    """Many deliveries at once over real HTTP, so that they are committed in groups: valid tickets
    (known and unknown organizations) each delivered several times inside the burst, a forged
    signature, a stale one and malformed JSON. Each is answered for itself; each valid ticket is
    recorded exactly once; the bad ones record nothing and do not disturb the others."""
    now = datetime.now(UTC).replace(microsecond=0)
    valid = {9000 + i: _ticket_body(9000 + i, 509974 if i % 2 else 999999, now) for i in range(BURST_TICKETS)}
    forged_body = _ticket_body(9900, 509974, now)  # never delivered with a valid signature
    stale_body = _ticket_body(9901, 509974, now)
    broken = valid[9000][:40]
    sends: list[tuple[str, bytes, dict[str, str]]] = []
    for copy in range(COPIES):
        sends += [(f"valid {t}", body, _zendesk(ZENDESK_SECRET)(body, now)) for t, body in valid.items()]
        if copy == 1:  # the bad ones in the middle of the burst
            sends += [("forged", forged_body, _zendesk("not-the-secret")(forged_body, now)),
                      ("stale", stale_body, _zendesk(ZENDESK_SECRET)(stale_body, now - STALE)),
                      ("malformed", broken, _zendesk(ZENDESK_SECRET)(broken, now))]  # fmt: skip

    with running_server(webhook_settings(settings)) as (http, reader):
        head = reader.app.last_position()

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=len(sends))
            async with httpx.AsyncClient(base_url=str(http.base_url), limits=limits, trust_env=False, timeout=30) as client:
                answers: list[httpx.Response | None] = [None] * len(sends)

                async def send(i: int) -> None:
                    answers[i] = await client.post("/webhooks/zendesk", content=sends[i][1], headers=sends[i][2])

                async with anyio.create_task_group() as tg:
                    for i in range(len(sends)):
                        tg.start_soon(send, i)
            return [a for a in answers if a is not None]

        answers = anyio.run(burst)
        assert len(answers) == len(sends)
        by_kind: dict[str, list[httpx.Response]] = {}
        for (kind, _, _), answer in zip(sends, answers, strict=True):
            by_kind.setdefault(kind, []).append(answer)
        assert [a.status_code for a in by_kind.pop("forged")] == [401]
        assert [a.status_code for a in by_kind.pop("stale")] == [401]
        assert [a.status_code for a in by_kind.pop("malformed")] == [400]
        for kind, copies in by_kind.items():
            assert [a.status_code for a in copies] == [200] * COPIES, kind
            assert sorted(a.json()["status"] for a in copies) == ["duplicate"] * (COPIES - 1) + ["recorded"], kind
            (kept,) = [a for a in copies if a.json()["status"] == "recorded"]
            assert kept.json()["recorded"] == 1
            assert kept.json()["unmatched"] == (0 if int(kind.split()[1]) % 2 else 1)

        reader.engine.ensure_current()
        stored = _ticket_events(reader, head)
        assert stored == {str(t): ["Opened"] for t in valid}  # once each; nothing for 9900, 9901
        with reader.store.snapshot() as tx:
            rows = {r["vendor_id"]: r["customer_id"] for r in tx.fetchall("SELECT vendor_id, customer_id FROM cs_tickets_v1")}
        assert rows == {str(t): (ACME if (t - 9000) % 2 else None) for t in valid}


def test_a_group_records_what_one_by_one_delivery_records(settings: Settings) -> None:
    """`Ingestion.commit_webhooks` with a whole group (new tickets, a status change of one of
    them, an exact repeat) answers each delivery as committing them one after the other does,
    and stores the same events for the same tickets (the two runs use different ticket ids)."""
    at = datetime.now(UTC).replace(microsecond=0)

    def bodies(base: int) -> list[bytes]:
        return [
            _ticket_body(base, 509974, at),
            _ticket_body(base + 1, 999999, at),
            encode(zendesk_ticket_event(zendesk_ticket(base, 509974, status="solved", updated_at=at + timedelta(minutes=1)),
                                        event_type="ticket.status_changed")),
            _ticket_body(base + 1, 999999, at),  # the same delivery again, inside the group
            _ticket_body(base + 2, 509974, at),
        ]  # fmt: skip

    settings = webhook_settings(settings)
    with open_services(settings) as svc:
        register_customers(svc)
        ingestion = Ingestion(svc.app, CustomerDirectory(svc.store), settings, actor="webhook")

        def run(grouped: bool, base: int) -> tuple[list[tuple[int, str]], dict[int, list[str]]]:
            head = svc.app.last_position()
            group = [ingestion.prepare_webhook("zendesk", _zendesk(ZENDESK_SECRET)(b, at), b) for b in bodies(base)]
            assert all(isinstance(p, PreparedWebhook) for p in group)
            ready = [p for p in group if isinstance(p, PreparedWebhook)]
            outcomes = ingestion.commit_webhooks(ready) if grouped else [ingestion.commit_webhooks([p])[0] for p in ready]
            svc.engine.ensure_current()
            answers = [(o.status, o.message) for o in outcomes if not isinstance(o, Exception)]
            return answers, {int(t) - base: topics for t, topics in _ticket_events(svc, head).items()}

        grouped, one_by_one = run(True, 7100), run(False, 7200)
    assert grouped == one_by_one
    assert grouped[0] == [(200, "recorded"), (200, "recorded"), (200, "recorded"), (200, "duplicate"), (200, "recorded")]
    assert grouped[1] == {0: ["Opened", "Changed", "Solved"], 1: ["Opened"], 2: ["Opened"]}


def test_a_full_queue_answers_503_and_recording_resumes(settings: Settings) -> None:
    """Back-pressure: deliveries beyond the queue's bound are refused with 503 (nothing recorded
    for them) instead of piling up; the queued ones are recorded once the ingest thread runs."""
    settings = webhook_settings(settings)
    at = datetime.now(UTC).replace(microsecond=0)
    bodies = [_ticket_body(8000 + i, 509974, at) for i in range(4)]
    with open_services(settings) as svc:
        register_customers(svc)
        head = svc.app.last_position()
        receiver = WebhookReceiver(svc, queue_max=2)  # not started: nothing leaves the queue yet

        async def deliver() -> tuple[list[int], list[int]]:
            answered: list[int] = []

            async def one(body: bytes) -> int:
                return (await receiver.submit("zendesk", _zendesk(ZENDESK_SECRET)(body, at), body)).status

            async def queued(body: bytes) -> None:
                answered.append(await one(body))

            async with anyio.create_task_group() as tg:
                for body in bodies[:2]:
                    tg.start_soon(queued, body)
                await anyio.wait_all_tasks_blocked()  # both wait in the queue
                refused = [await one(b) for b in bodies[2:]]  # the queue is full: answered at once
                assert svc.app.last_position() == head
                receiver.start()
            return answered, refused

        try:
            answered, refused = anyio.run(deliver)
        finally:
            receiver.close()
        assert refused == [503, 503]
        assert answered == [200, 200]
        svc.engine.ensure_current()
        assert set(_ticket_events(svc, head)) == {"8000", "8001"}


def test_beside_a_worker_the_receiver_leaves_the_views_to_it(settings: Settings) -> None:
    """compose.yaml's shape: another process (here a second ``Services``, as `cs worker`) holds
    every projection runner lock. The server's receiver records a delivery and leaves its
    engine asleep: a pass there would only try every runner lock again. A process that runs the
    views wakes its engine for what it recorded."""
    settings = webhook_settings(settings)
    at = datetime.now(UTC).replace(microsecond=0)

    def deliver(svc: Services, body: bytes) -> str:
        receiver = WebhookReceiver(svc)
        receiver.start()
        try:
            outcome = anyio.run(receiver.submit, "zendesk", _zendesk(ZENDESK_SECRET)(body, at), body)
        finally:
            receiver.close()
        return outcome.message

    with open_services(settings) as worker:
        register_customers(worker)
        with open_services(settings) as server:
            assert not any(runner.owned for runner in server.engine.runners.values())
            head = server.app.last_position()
            assert deliver(server, _ticket_body(8200, 509974, at)) == "recorded"
            assert server.app.last_position() > head
            assert not server.engine._wake.is_set()
        assert all(runner.owned for runner in worker.engine.runners.values())
        assert deliver(worker, _ticket_body(8201, 509974, at)) == "recorded"
        assert worker.engine._wake.is_set()
        worker.engine.ensure_current()
        assert set(_ticket_events(worker, head)) == {"8200", "8201"}


def test_a_failing_delivery_in_a_group_fails_alone(settings: Settings) -> None:
    """When a group cannot be committed (here one delivery's fill raises), its deliveries are
    committed one by one: the error is answered to that delivery, the others are recorded."""
    settings = webhook_settings(settings)
    at = datetime.now(UTC).replace(microsecond=0)
    with open_services(settings) as svc:
        register_customers(svc)
        ingestion = Ingestion(svc.app, CustomerDirectory(svc.store), settings, actor="webhook")
        head = svc.app.last_position()
        good = [ingestion.prepare_webhook("zendesk", _zendesk(ZENDESK_SECRET)(b, at), b)
                for b in (_ticket_body(8100, 509974, at), _ticket_body(8101, 999999, at))]  # fmt: skip
        assert all(isinstance(p, PreparedWebhook) for p in good)

        def explode(_: Any) -> None:
            raise RuntimeError("this delivery cannot be recorded")

        bad = PreparedWebhook("zendesk", "bad", explode, None)
        outcomes = ingestion.commit_webhooks([good[0], bad, good[1]])  # type: ignore[list-item]
        assert isinstance(outcomes[1], RuntimeError)
        assert [(o.status, o.message) for o in (outcomes[0], outcomes[2])] == [(200, "recorded")] * 2  # type: ignore[union-attr]
        svc.engine.ensure_current()
        assert _ticket_events(svc, head) == {"8100": ["Opened"], "8101": ["Opened"]}


def test_the_webhook_route_answers_503_with_retry_after_and_keeps_other_paths() -> None:
    """The ASGI route in front of the Starlette app: a refused delivery carries Retry-After; a
    wrong method, an unknown vendor and an oversized body are answered there; other paths pass."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def busy(vendor: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        seen.append((vendor, headers, body))
        return 503, {"status": "too many deliveries waiting; retry later"}

    async def other(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=WebhookRoute(other, busy))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [
                await client.post("/webhooks/zendesk", content=b"{}", headers={"X-Zendesk-Webhook-Id": "a"}),
                await client.get("/webhooks/zendesk"),
                await client.post("/webhooks/nobody", content=b"{}"),
                await client.post("/webhooks/zendesk", content=b"x" * (MAX_WEBHOOK_BYTES + 1)),
                await client.get("/healthz"),
            ]

    busy_answer, wrong_method, unknown, too_large, elsewhere = anyio.run(calls)
    assert busy_answer.status_code == 503 and busy_answer.headers["retry-after"] == "1"
    assert busy_answer.json() == {"status": "too many deliveries waiting; retry later"}
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert unknown.status_code == 404
    assert too_large.status_code == 413
    assert elsewhere.status_code == 204
    assert [(v, h["x-zendesk-webhook-id"], b) for v, h, b in seen] == [("zendesk", "a", b"{}")]
