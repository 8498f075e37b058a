"""connectors.http.VendorClient against a real HTTP server on loopback (pytest-httpserver).

Nothing of httpx or of the client is mocked: each test scripts the server's answers and
checks what the client did (requests the server saw, time waited, errors raised).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
import structlog
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from connectors.http import (
    CircuitOpenError,
    MalformedResponseError,
    RateLimitedError,
    VendorClient,
    VendorError,
    VendorRequestError,
    VendorUnavailableError,
    configure_breaker,
    get_breaker,
    reset_breakers,
)

pytestmark = pytest.mark.anyio
FAST = {"backoff_base": 0.01, "backoff_max": 0.05}  # keep backoff sleeps tiny


@pytest.fixture(scope="module")
def _threaded_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)  # concurrent requests for timeouts
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def server(_threaded_server: HTTPServer) -> Iterator[HTTPServer]:
    reset_breakers()
    yield _threaded_server
    try:
        _threaded_server.check_assertions()  # no request the test did not script
    finally:
        _threaded_server.clear()
        reset_breakers()


def client_for(server: HTTPServer, vendor: str = "acme", **kwargs: object) -> VendorClient:
    return VendorClient(vendor, server.url_for("/"), **{**FAST, **kwargs})  # type: ignore[arg-type]


def hits(server: HTTPServer) -> int:
    return len(server.log)


async def test_success_returns_json_and_sends_configured_headers(server: HTTPServer) -> None:
    server.expect_request("/api/items", query_string="page=2", headers={"X-Version": "2.11"}).respond_with_json(
        {"items": [1, 2]}
    )
    async with client_for(server, headers={"X-Version": "2.11"}) as client:
        assert await client.get_json("/api/items", params={"page": 2}) == {"items": [1, 2]}
        # an absolute URL on the same origin is accepted (Zendesk's after_url)
        assert await client.get_json(server.url_for("/api/items?page=2")) == {"items": [1, 2]}
    assert hits(server) == 2


async def test_post_json_sends_body_and_accepts_empty_202(server: HTTPServer) -> None:
    server.expect_request("/v3/mail/send", method="POST", json={"to": "a@b.com"}).respond_with_data(
        "", status=202, headers={"X-Message-Id": "m1"}
    )
    async with client_for(server) as client:
        assert await client.post_json("/v3/mail/send", {"to": "a@b.com"}) is None


async def test_429_retry_after_seconds_waits_then_succeeds(server: HTTPServer) -> None:
    server.expect_oneshot_request("/t").respond_with_data("slow down", status=429, headers={"Retry-After": "1"})
    server.expect_request("/t").respond_with_json({"ok": True})
    async with client_for(server) as client:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            assert await client.get_json("/t") == {"ok": True}
            waited = time.monotonic() - started
    assert waited >= 0.95
    assert hits(server) == 2
    retry = next(e for e in logs if e["event"] == "vendor_retry")
    assert retry["log_level"] == "warning"
    assert (retry["vendor"], retry["status"], retry["attempt"]) == ("acme", 429, 1) and retry["wait"] >= 1


async def test_429_retry_after_http_date(server: HTTPServer) -> None:
    server.expect_request("/t").respond_with_data(
        "", status=429, headers={"Retry-After": formatdate(time.time() + 600, usegmt=True)}
    )
    async with client_for(server, max_wait=60) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.get_json("/t")
    assert 590 <= caught.value.retry_after <= 601  # type: ignore[operator]


async def test_429_x_ratelimit_reset_epoch_waits_until_reset(server: HTTPServer) -> None:
    reset = math.ceil(time.time() + 0.5)  # Intercom / SendGrid: unix seconds
    server.expect_oneshot_request("/t").respond_with_data("", status=429, headers={"X-RateLimit-Reset": str(reset)})
    server.expect_request("/t").respond_with_json([])
    async with client_for(server) as client:
        assert await client.get_json("/t") == []
    assert time.time() >= reset - 0.05
    assert hits(server) == 2


@pytest.mark.parametrize(
    ("header", "offset", "expected"),
    [("X-RateLimit-Reset", True, 120), ("ratelimit-reset", False, 120), ("Retry-After", False, 3600)],
)
async def test_wait_beyond_max_wait_raises_at_once(server: HTTPServer, header: str, offset: bool, expected: int) -> None:
    value = int(time.time()) + expected if offset else expected  # epoch vs seconds (Zendesk)
    server.expect_request("/t").respond_with_data("", status=429, headers={header: str(value)})
    async with client_for(server, max_wait=60) as client:
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as caught:
            await client.get_json("/t")
    assert time.monotonic() - started < 0.5
    assert hits(server) == 1
    assert expected - 2 <= caught.value.retry_after <= expected  # type: ignore[operator]
    assert "answered HTTP 429 and asked to wait" in str(caught.value)
    assert get_breaker("acme").consecutive_failures == 0  # the vendor answered: not a failure


async def test_wait_beyond_deadline_gives_up_without_sleeping(server: HTTPServer) -> None:
    server.expect_request("/t").respond_with_data("", status=429, headers={"Retry-After": "5"})
    async with client_for(server, deadline=1.0) as client:
        started = time.monotonic()
        with pytest.raises(VendorUnavailableError, match="deadline reached after 1 attempt"):
            await client.get_json("/t")
    assert time.monotonic() - started < 0.5
    assert hits(server) == 1


async def test_burst_of_503_then_success(server: HTTPServer) -> None:
    for _ in range(3):
        server.expect_ordered_request("/t").respond_with_data("busy", status=503)
    server.expect_ordered_request("/t").respond_with_json({"ok": 1})
    async with client_for(server) as client:
        assert await client.get_json("/t") == {"ok": 1}
    assert hits(server) == 4


async def test_persistent_500_exhausts_attempts(server: HTTPServer) -> None:
    server.expect_request("/t").respond_with_data("boom", status=500)
    async with client_for(server, max_attempts=4) as client:
        with pytest.raises(VendorUnavailableError, match=r"retries exhausted after 4 attempt.*HTTP 500"):
            await client.get_json("/t")
    assert hits(server) == 4
    assert get_breaker("acme").consecutive_failures == 1  # one failed call, not four


async def test_404_is_not_retried(server: HTTPServer) -> None:
    server.expect_request("/api/v2/tickets/9").respond_with_json({"error": "RecordNotFound"}, status=404)
    async with client_for(server, vendor="zendesk") as client:
        with pytest.raises(VendorRequestError) as caught:
            await client.get_json("/api/v2/tickets/9")
    err = caught.value
    assert (err.status, err.vendor, err.method, err.path) == (404, "zendesk", "GET", "/api/v2/tickets/9")
    assert "RecordNotFound" in str(err)
    assert hits(server) == 1


async def test_malformed_json_is_not_retried(server: HTTPServer) -> None:
    server.expect_request("/page").respond_with_data("<html>oops", content_type="text/html")
    async with client_for(server) as client:
        with pytest.raises(MalformedResponseError, match="not JSON: <html>oops"):
            await client.get_json("/page")
    assert hits(server) == 1


async def test_read_timeout_is_retried(server: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.6)
        return Response("{}", content_type="application/json")

    server.expect_oneshot_request("/t").respond_with_handler(slow)
    server.expect_request("/t").respond_with_json({"fast": True})
    async with client_for(server, timeout=0.2) as client:
        with structlog.testing.capture_logs() as logs:
            assert await client.get_json("/t") == {"fast": True}
    assert [e["status"] for e in logs if e["event"] == "vendor_retry"] == ["ReadTimeout"]
    for _ in range(40):  # let the slow handler finish so it cannot log into the next test
        if hits(server) == 2:
            break
        await asyncio.sleep(0.05)
    assert hits(server) == 2


async def test_connect_error_is_retried_then_unavailable() -> None:
    reset_breakers()
    async with VendorClient("down", "http://127.0.0.1:9", max_attempts=2, **FAST) as client:  # type: ignore[arg-type]
        with pytest.raises(VendorUnavailableError, match="ConnectError"):
            await client.get_json("/t")


async def test_breaker_opens_fails_fast_then_half_open_trial_closes_it(server: HTTPServer) -> None:
    configure_breaker("flaky", failure_threshold=2, reset_after=0.4)
    server.expect_request("/t").respond_with_data("down", status=502)
    async with client_for(server, vendor="flaky", max_attempts=2) as client, client_for(
        server, vendor="flaky"
    ) as other:
        assert client.breaker is other.breaker  # one breaker per vendor in the process
        for _ in range(2):
            with pytest.raises(VendorUnavailableError):
                await client.get_json("/t")
        breaker = client.breaker
        assert (breaker.state, breaker.consecutive_failures) == ("open", 2)
        assert breaker.opened_at is not None and abs(breaker.opened_at - time.time()) < 5
        seen = hits(server)
        with pytest.raises(CircuitOpenError):
            await other.get_json("/t")
        assert hits(server) == seen  # failed fast: nothing reached the server

        await asyncio.sleep(0.45)
        assert breaker.state == "half_open"
        server.clear_all_handlers()
        server.expect_request("/t").respond_with_json({"ok": True})
        assert await other.get_json("/t") == {"ok": True}
        assert (breaker.state, breaker.consecutive_failures, breaker.opened_at) == ("closed", 0, None)


async def test_half_open_allows_one_trial_and_a_failed_trial_reopens(server: HTTPServer) -> None:
    breaker = configure_breaker("flaky", failure_threshold=1, reset_after=0.3)
    server.expect_request("/t").respond_with_data("down", status=500)
    async with client_for(server, vendor="flaky", max_attempts=3) as client:
        with pytest.raises(VendorUnavailableError):
            await client.get_json("/t")
        await asyncio.sleep(0.35)
        seen = hits(server)

        def slow_fail(request: Request) -> Response:
            time.sleep(0.3)
            return Response("still down", status=500)

        server.clear_all_handlers()
        server.expect_request("/t").respond_with_handler(slow_fail)
        results = await asyncio.gather(client.get_json("/t"), client.get_json("/t"), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["CircuitOpenError", "VendorUnavailableError"]
        assert hits(server) == seen + 1  # one trial, one attempt, despite max_attempts=3
        assert breaker.state == "open"


async def test_stream_lines_gzip_jsonl_retried_before_first_byte(server: HTTPServer) -> None:
    events = [{"event": "Signed Up", "properties": {"$insert_id": f"i{n}", "time": n}} for n in range(500)]
    body = gzip.compress(("\n".join(json.dumps(e) for e in events) + "\n").encode())
    server.expect_oneshot_request("/api/2.0/export").respond_with_data("", status=503, headers={"Retry-After": "0"})
    server.expect_request(
        "/api/2.0/export", query_string={"project_id": "7"}, headers={"Accept-Encoding": "gzip"}
    ).respond_with_data(body, headers={"Content-Encoding": "gzip"}, content_type="application/x-ndjson")
    async with client_for(server, vendor="mixpanel") as client:
        lines = [line async for line in client.stream_lines("/api/2.0/export", params={"project_id": "7"})]
    assert [json.loads(line) for line in lines] == events
    assert hits(server) == 2


async def test_secrets_never_appear_in_errors_or_logs(server: HTTPServer) -> None:
    server.expect_request("/denied").respond_with_data("bad credentials user:s3cret", status=401)
    server.expect_request("/forbidden").respond_with_data("token tok-XYZ1 lacks scope", status=403)
    server.expect_request("/down").respond_with_data("s3cret", status=500)
    async with client_for(server, auth=("user", "s3cret"), max_attempts=2) as basic, client_for(
        server, vendor="intercom", headers={"Authorization": "Bearer tok-XYZ1"}
    ) as bearer:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(VendorRequestError) as denied:
                await basic.get_json("/denied", params={"api_key": "s3cret"})
            with pytest.raises(VendorUnavailableError) as down:
                await basic.get_json("/down", params={"api_key": "s3cret"})
            with pytest.raises(VendorRequestError) as denied_bearer:
                await bearer.get_json("/forbidden")
    text = " ".join([str(denied.value), str(down.value), str(denied_bearer.value), repr(logs)])
    assert "s3cret" not in text and "tok-XYZ1" not in text
    assert "[redacted]" in str(denied.value) and "[redacted]" in str(denied_bearer.value)
    assert server.log[0][0].authorization is not None  # credentials were sent, only not echoed


async def test_absolute_url_to_another_origin_is_refused(server: HTTPServer) -> None:
    async with client_for(server, auth=("user", "s3cret")) as client:
        with pytest.raises(VendorError, match="another origin") as caught:
            await client.get_json("http://127.0.0.2:1/steal")
    assert "s3cret" not in str(caught.value)
    assert hits(server) == 0


async def test_stream_that_does_not_decode_raises_a_vendor_error(server: HTTPServer) -> None:
    server.expect_request("/export").respond_with_data(
        b"\x1f\x8b\x08\x00garbage-not-deflate" * 10, headers={"Content-Encoding": "gzip"}
    )
    async with client_for(server, vendor="mixpanel") as client:
        with pytest.raises(VendorError, match="DecodingError"):
            _ = [line async for line in client.stream_lines("/export")]
    assert hits(server) == 1
