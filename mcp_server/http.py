"""`cs serve --http`: MCP streamable HTTP at /mcp, vendor webhooks, /healthz and /metrics.

- ``/mcp`` requires ``Authorization: Bearer $CS_HTTP_TOKEN`` when a token is set; without a
  token the server refuses to bind anywhere but loopback.
- ``/webhooks/{zendesk,intercom,sendgrid}`` check the vendor's signature (401 when bad or
  stale), answer 400 on malformed JSON, and 200 on a duplicate (recorded once).
- ``/metrics`` is Prometheus text (prometheus-client, its own registry per app).
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from typing import Any

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.service import Ingestion
from events.errors import InvalidInputError
from events.settings import Settings
from mcp_server.server import build_server
from mcp_server.services import Services
from projections.profile import CUSTOMERS, CustomerDirectory

WEBHOOK_VENDORS = ("zendesk", "intercom", "sendgrid")
MAX_WEBHOOK_BYTES = 5 * 1024 * 1024


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


class WebhookReceiver:
    """One Ingestion for every delivery; its customer directory is reloaded when a customer
    row has changed since the last delivery. The profile view's checkpoint (a cheap read)
    moves with every event, tickets included; only then is the customers table asked whether
    any row changed (its row count and newest ``last_position``), so a stream of deliveries
    does not reload every customer for each of them."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.seen = svc.store.checkpoint("customer_profile_v1")
        self.version = self._customers_version()  # read before the load: a change in between reloads again
        self.directory = CustomerDirectory(svc.store)
        self.ingestion = Ingestion(svc.app, self.directory, svc.settings, actor="webhook")

    def _customers_version(self) -> tuple[int, int]:
        with self.svc.store.snapshot() as tx:
            row = tx.fetchone(f"SELECT COUNT(*) AS n, MAX(last_position) AS last FROM {CUSTOMERS}")
        return (int(row["n"]), int(row["last"] or 0)) if row else (0, 0)

    def deliver(self, vendor: str, headers: dict[str, str], body: bytes) -> Any:
        checkpoint = self.svc.store.checkpoint("customer_profile_v1")
        if checkpoint != self.seen:
            self.seen = checkpoint
            version = self._customers_version()
            if version != self.version:
                self.version = version
                self.directory.refresh()
        outcome = self.ingestion.webhook(vendor, headers, body)
        if outcome.report and outcome.report.position:
            self.svc.engine.wake()
        return outcome


def build_http_app(settings: Settings, *, host: str = "127.0.0.1") -> Starlette:
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

    server = build_server(settings, on_open=opened)

    @server.custom_route("/webhooks/{vendor}", methods=["POST"])
    async def webhook(request: Request) -> Response:
        vendor = request.path_params["vendor"]
        if vendor not in WEBHOOK_VENDORS:
            return JSONResponse({"error": f"no webhook receiver for {vendor!r}"}, status_code=404)
        body = await request.body()
        if len(body) > MAX_WEBHOOK_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        started = time.perf_counter()
        outcome = await anyio.to_thread.run_sync(state["receiver"].deliver, vendor, dict(request.headers), body)
        latency.labels(vendor).observe(time.perf_counter() - started)
        deliveries.labels(vendor, str(outcome.status)).inc()
        payload: dict[str, Any] = {"status": outcome.message}
        if outcome.report is not None:
            payload.update(recorded=outcome.report.recorded, duplicates=outcome.report.duplicates,
                           unmatched=outcome.report.unmatched)  # fmt: skip
        return JSONResponse(payload, status_code=outcome.status)

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
    return app
