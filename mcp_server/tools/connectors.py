"""Connector tools: get_sync_status."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from connectors.http import get_breaker
from mcp_server.cli_connectors import CREDENTIALS
from mcp_server.tools.common import read_ready, services, tool_errors
from projections.sync_status import SyncStatusView

VENDORS = ("zendesk", "intercom", "mixpanel", "sendgrid", "nps")
WEBHOOK_SECRETS = {
    "zendesk": "CS_ZENDESK_WEBHOOK_SECRET",
    "intercom": "CS_INTERCOM_CLIENT_SECRET",
    "sendgrid": "CS_SENDGRID_WEBHOOK_PUBLIC_KEY",
}


BATCHES = ("recorded batches: every sync page, and each file import that recorded something; a file import made "
           "only of duplicates and webhook deliveries record none (their outcomes are in /metrics)")


class ConnectorStatus(BaseModel):
    vendor: str
    sync_configured: bool = Field(description="credentials for `cs sync` are set")
    webhook_configured: bool = Field(description="the webhook signature secret/key is set")
    cursor: str | None
    last_sync_at: str | None
    last_batch_at: str | None
    batches: int = Field(description=BATCHES)
    received: int
    recorded: int
    duplicates: int = Field(description="records already held, recognised and not recorded again (in recorded batches)")
    unmatched: int = Field(description="records kept without a customer, counted when ingested")
    unmatched_records_held: int = Field(description="records in the views still matched to no customer")
    rejected: int
    failures: int
    last_error: str | None
    circuit_breaker: str = Field(description="closed / open / half_open, in this server process")
    note: str | None = None


class SyncStatus(BaseModel):
    connectors: list[ConnectorStatus]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="Connector sync status", read_only_hint=True))
    def get_sync_status(ctx: Context) -> SyncStatus:
        """Per connector (Zendesk, Intercom, Mixpanel, SendGrid, NPS files): last sync, cursor,
        records ingested, duplicates, unmatched records, rejected records, failures and the
        circuit-breaker state. Counts are per recorded batch: a file import made only of
        duplicates, and webhook deliveries, record none (recording nothing is what makes a
        redelivery harmless). Use it when data looks stale or a customer's signals are missing."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            rows = {r["vendor"]: r for r in SyncStatusView(svc.store).all()}
        env = svc.settings.vendor
        out = []
        for vendor in VENDORS:
            row: dict[str, Any] = rows.get(vendor, {})
            creds = CREDENTIALS.get(vendor)
            out.append(ConnectorStatus(
                vendor=vendor,
                sync_configured=bool(creds) and all(env.get(name) for name in creds or ()),
                webhook_configured=bool(env.get(WEBHOOK_SECRETS.get(vendor, ""), "")),
                cursor=row.get("cursor"), last_sync_at=row.get("last_sync_at"), last_batch_at=row.get("last_batch_at"),
                batches=int(row.get("batches") or 0), received=int(row.get("received") or 0),
                recorded=int(row.get("recorded") or 0), duplicates=int(row.get("duplicates") or 0),
                unmatched=int(row.get("unmatched") or 0), unmatched_records_held=int(row.get("unmatched_records_held") or 0),
                rejected=int(row.get("rejected") or 0), failures=int(row.get("failures") or 0),
                last_error=row.get("last_error"), circuit_breaker=get_breaker(vendor).state,
                note=None if row else "nothing ingested from this source yet",
            ))  # fmt: skip
        return SyncStatus(connectors=out)
