"""`cs serve --http`: MCP streamable HTTP at /mcp, vendor webhooks, /healthz and /metrics.

- ``/mcp`` requires ``Authorization: Bearer $CS_HTTP_TOKEN`` when a token is set; without a
  token the server refuses to bind anywhere but loopback.
- ``/webhooks/{zendesk,intercom,sendgrid}`` check the vendor's signature (401 when bad or
  stale), answer 400 on malformed JSON, and 200 on a duplicate (recorded once).
- ``/metrics`` is Prometheus text (prometheus-client, its own registry per app).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import anyio.to_thread
import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.service import Ingestion, PreparedWebhook, WebhookOutcome
from events.errors import InvalidInputError
from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import Services
from projections.profile import CUSTOMERS, CustomerDirectory

log = structlog.get_logger(__name__)

WEBHOOK_VENDORS = ("zendesk", "intercom", "sendgrid")
MAX_WEBHOOK_BYTES = 5 * 1024 * 1024
INLINE_PREPARE_BYTES = 64 * 1024  # larger bodies are verified and parsed off the event loop
GROUP_MAX = 256  # deliveries recorded in one transaction at most
LINGER_S = 0.003  # how long a group's first delivery may wait for others (see WebhookReceiver._run)
QUEUE_MAX = 2048  # deliveries waiting for the ingest thread; beyond that: 503
RETRY_AFTER_S = "1"


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a bearer token (DESIGN §7)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise InvalidInputError("CS_HTTP_TOKEN", f"required to serve HTTP on {host} (only loopback may go without one)")


class BearerAuth:
    """ASGI middleware: /mcp needs the bearer token; webhooks carry their own signatures."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected and scope["type"] == "http" and scope["path"].startswith("/mcp"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)  # fmt: skip
                return
        await self.app(scope, receive, send)


WebhookHandler = Callable[[str, dict[str, str], bytes], Awaitable[tuple[int, dict[str, Any]]]]


class WebhookRoute:
    """ASGI: ``/webhooks/{vendor}`` answered here, in front of the Starlette app (MCP, /healthz,
    /metrics), which gets every other request. A delivery is small and frequent: going through
    Starlette's middleware stack, router and Request/Response objects cost about as much CPU
    as verifying and parsing it."""

    PREFIX = "/webhooks/"

    def __init__(self, app: ASGIApp, handle: WebhookHandler) -> None:
        self.app = app
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        vendor = scope["path"][len(self.PREFIX):] if scope["type"] == "http" and scope["path"].startswith(self.PREFIX) else ""
        if not vendor or "/" in vendor:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "method not allowed"}, [(b"allow", b"POST")])
            return
        if vendor not in WEBHOOK_VENDORS:
            await _answer(send, 404, {"error": f"no webhook receiver for {vendor!r}"})
            return
        headers: dict[str, str] = {}
        for name, value in reversed(scope["headers"]):  # reversed: the first of repeated headers wins
            headers[name.decode("latin-1")] = value.decode("latin-1")
        body = await _read_body(receive, MAX_WEBHOOK_BYTES)
        if body is None:
            await _answer(send, 413, {"error": "body too large"})
            return
        try:
            status, payload = await self.handle(vendor, headers, body)
        except Exception:  # noqa: BLE001 - answered 500; the cause goes to the log, never the body
            log.exception("webhook.failed", vendor=vendor)
            await _answer(send, 500, {"error": "internal error"})
            return
        await _answer(send, status, payload, [(b"retry-after", RETRY_AFTER_S.encode())] if status == 503 else [])


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(send: Send, status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(payload)  # compact UTF-8, as json.dumps(ensure_ascii=False, separators=(",", ":"))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Queued(NamedTuple):
    prepared: PreparedWebhook
    answer: asyncio.Future[Any]
    queued_at: float  # time.monotonic()


class WebhookReceiver:
    """Records webhook deliveries with group commit.

    A delivery is verified, parsed and translated when it arrives (:meth:`submit`, on the event
    loop; a large body in a worker thread), so a bad one is answered at once and never reaches
    the store. A good one is queued for the one ingest thread, which takes every delivery
    waiting (up to ``group_max``; a group's first delivery waits at most ``linger`` for others)
    and records each vendor's share in one batch and one transaction
    (:meth:`Ingestion.commit_webhooks`): while a commit runs, the next group gathers. Every
    delivery is still answered with its own outcome. A full queue answers 503
    (back-pressure) instead of growing without bound.

    The customer directory is reloaded before a group when a customer row has changed since
    the last one. The profile view's checkpoint (a cheap read) moves with every event, tickets
    included; only then is the customers table asked whether any row changed (its row count
    and newest ``last_position``), so a stream of deliveries does not reload every customer."""

    def __init__(self, svc: Services, *, group_max: int = GROUP_MAX, queue_max: int = QUEUE_MAX,
                 linger: float = LINGER_S) -> None:  # fmt: skip
        self.svc = svc
        self.group_max = group_max
        self.linger = linger
        self.seen = svc.store.checkpoint("customer_profile_v1")
        self.version = self._customers_version()  # read before the load: a change in between reloads again
        self.directory = CustomerDirectory(svc.store)
        self.ingestion = Ingestion(svc.app, self.directory, svc.settings, actor="webhook")
        self._queue: queue.Queue[Queued | None] = queue.Queue(queue_max)
        self._thread = threading.Thread(target=self._run, name="cs-webhook-ingest", daemon=True)

    def start(self) -> None:
        """Start recording what is queued (deliveries are accepted into the queue before)."""
        self._thread.start()

    def _customers_version(self) -> tuple[int, int]:
        rows = self.svc.store.read(f"SELECT COUNT(*), MAX(last_position) FROM {CUSTOMERS}")  # one statement
        return (int(rows[0][0]), int(rows[0][1] or 0)) if rows else (0, 0)

    def _refresh_directory(self) -> None:
        checkpoint = self.svc.store.checkpoint("customer_profile_v1")
        if checkpoint != self.seen:
            self.seen = checkpoint
            version = self._customers_version()
            if version != self.version:
                self.version = version
                self.directory.refresh()

    async def submit(self, vendor: str, headers: dict[str, str], body: bytes) -> WebhookOutcome:
        """Answer one delivery: at once when it is refused, else once its group is committed."""
        if len(body) > INLINE_PREPARE_BYTES:  # parsing it here would stall every other request
            prepared = await anyio.to_thread.run_sync(self.ingestion.prepare_webhook, vendor, headers, body)
        else:
            prepared = self.ingestion.prepare_webhook(vendor, headers, body)
        if isinstance(prepared, WebhookOutcome):
            return prepared
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(Queued(prepared, answer, time.monotonic()))
        except queue.Full:
            return WebhookOutcome(503, "too many deliveries waiting; retry later")
        result = await answer
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        """Record what is queued, then stop the ingest thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            group: list[Queued] = []
            # A commit has a fixed cost (about 0.5 ms of CPU here, whatever its size): a group is
            # closed once its first delivery has waited ``linger`` seconds (at once when it has
            # waited that long already, behind the previous commit), with what is waiting then
            # (``group_max`` at most). The thread sleeps meanwhile instead of waiting on the
            # queue: a waiter is woken by every delivery put, and each wake-up takes the GIL
            # from the event loop just to append it.
            if item is not None and (wait := item.queued_at + self.linger - time.monotonic()) > 0:
                time.sleep(wait)
            while item is not None:
                group.append(item)
                if len(group) >= self.group_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stopping = item is None
            if group:
                self._record(group)

    def _record(self, group: list[Queued]) -> None:
        results: list[tuple[asyncio.Future[Any], WebhookOutcome | BaseException]] = []
        try:
            self._refresh_directory()
            by_vendor: dict[str, list[Queued]] = {}
            for item in group:
                by_vendor.setdefault(item.prepared.vendor, []).append(item)
            for items in by_vendor.values():
                outcomes = self.ingestion.commit_webhooks([item.prepared for item in items])
                results.extend(zip((item.answer for item in items), outcomes, strict=True))
        except Exception as exc:  # noqa: BLE001 - e.g. the directory could not be read: every delivery left gets it
            answered = {id(answer) for answer, _ in results}
            results.extend((item.answer, exc) for item in group if id(item.answer) not in answered)
        if any(isinstance(o, WebhookOutcome) and o.report and o.report.position for _, o in results):
            self.svc.engine.wake()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for answer, outcome in results:
            by_loop.setdefault(answer.get_loop(), []).append((answer, outcome))
        for loop, answers in by_loop.items():  # one hand-off per loop for the whole group
            try:
                loop.call_soon_threadsafe(_resolve, answers)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass


def _resolve(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for answer, outcome in answers:
        if not answer.done():  # the request may have been cancelled (client gone)
            answer.set_result(outcome)


def build_http_app(settings: Settings, *, host: str = "127.0.0.1") -> ASGIApp:
    check_bind(host, settings.http_token)
    state: dict[str, Any] = {}
    registry = CollectorRegistry()
    deliveries = Counter("cs_webhook_deliveries", "Webhook deliveries by vendor and outcome", ["vendor", "outcome"], registry=registry)
    latency = Histogram("cs_webhook_seconds", "Webhook handling time", ["vendor"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))  # fmt: skip
    head = Gauge("cs_log_position", "Position of the newest event in the log", registry=registry)
    lag = Gauge("cs_projection_lag", "Events not yet folded into a view", ["projection"], registry=registry)

    def opened(svc: Services) -> None:
        state["svc"] = svc
        state["receiver"] = WebhookReceiver(svc)
        state["receiver"].start()

    def closing() -> None:
        if "receiver" in state:
            state.pop("receiver").close()

    server = build_server(settings, on_open=opened, on_close=closing)

    # The labelled children, looked up once: labels() takes a lock and builds a key every call.
    latency_of = {vendor: latency.labels(vendor) for vendor in WEBHOOK_VENDORS}
    counted: dict[tuple[str, int], Any] = {}

    async def webhook(vendor: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        outcome = await state["receiver"].submit(vendor, headers, body)
        latency_of[vendor].observe(time.perf_counter() - started)
        counter = counted.get((vendor, outcome.status))
        if counter is None:
            counter = counted[(vendor, outcome.status)] = deliveries.labels(vendor, str(outcome.status))
        counter.inc()
        payload: dict[str, Any] = {"status": outcome.message}
        if outcome.report is not None:
            payload.update(recorded=outcome.report.recorded, duplicates=outcome.report.duplicates,
                           unmatched=outcome.report.unmatched)  # fmt: skip
        return outcome.status, payload

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_: Request) -> Response:
        svc: Services = state["svc"]
        status = await anyio.to_thread.run_sync(svc.engine.status)
        stopped = [s for s in status if s.get("stopped_at") is not None]
        return JSONResponse({"status": "degraded" if stopped else "ok", "projections": status},
                            status_code=503 if stopped else 200)  # fmt: skip

    @server.custom_route("/metrics", methods=["GET"])
    async def metrics(_: Request) -> Response:
        svc: Services = state["svc"]
        status = await anyio.to_thread.run_sync(svc.engine.status)
        head.set(max((s["position"] + s["lag"] for s in status), default=0))
        for s in status:
            lag.labels(s["projection"]).set(s["lag"])
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app = server.streamable_http_app(host=host)
    app.add_middleware(BearerAuth, token=settings.http_token)
    return WebhookRoute(app, webhook)
