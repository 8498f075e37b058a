"""`cs import SOURCE FILE` for vendor files and `cs sync SOURCE`: the connectors from the CLI."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

import anyio
from rich.console import Console
from rich.table import Table

from connectors.http import VendorClient, VendorError
from connectors.service import SYNC_SOURCES, Ingestion
from events.errors import InvalidInputError
from events.ingest import BatchReport
from events.settings import Settings
from mcp_server.services import Services, open_services

DEFAULT_BASE_URLS = {"intercom": "https://api.intercom.io", "mixpanel": "https://data.mixpanel.com"}
CREDENTIALS = {
    "zendesk": ("CS_ZENDESK_BASE_URL", "CS_ZENDESK_EMAIL", "CS_ZENDESK_API_TOKEN"),
    "intercom": ("CS_INTERCOM_TOKEN",),
    "mixpanel": ("CS_MIXPANEL_PROJECT_ID", "CS_MIXPANEL_USERNAME", "CS_MIXPANEL_SECRET"),
}


def import_signals(svc: Services, source: str, stream: IO[str], name: str, console: Console | None) -> BatchReport:
    ingestion = svc.ingestion(actor="cli")
    if console is None:
        return ingestion.import_file(source, stream, name)
    with console.status(f"importing {name}") as status:
        seen = 0

        def progress(n: int) -> None:
            nonlocal seen
            seen += n
            status.update(f"importing {name}: {seen:,} records")

        return ingestion.import_file(source, stream, name, progress)


def print_batch(console: Console, report: BatchReport, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console.print(
        f"{title}: {report.received:,} received, [green]{report.recorded:,} recorded[/], {report.unchanged:,} unchanged, "
        f"{report.duplicates:,} duplicates, [yellow]{report.unmatched:,} unmatched[/] (kept, see get_sync_status), "
        f"[red]{len(report.rejected):,} rejected[/]"
    )
    if report.rejected:
        table = Table("where", "field", "reason", title="Rejected records (nothing recorded for them)")
        for r in report.rejected[:50]:
            table.add_row(r["where"], r["field"], r["reason"])
        console.print(table)
        if len(report.rejected) > 50:
            console.print(f"... and {len(report.rejected) - 50} more (use --json for all)")


def vendor_client(vendor: str, settings: Settings) -> VendorClient:
    env = settings.vendor
    missing = [name for name in CREDENTIALS[vendor] if not env.get(name)]
    if missing:
        raise InvalidInputError(missing[0], f"required for `cs sync {vendor}` (see .env.example)")
    if vendor == "zendesk":
        return VendorClient(vendor, env["CS_ZENDESK_BASE_URL"],
                            auth=(f"{env['CS_ZENDESK_EMAIL']}/token", env["CS_ZENDESK_API_TOKEN"]))  # fmt: skip
    if vendor == "intercom":
        return VendorClient(vendor, env.get("CS_INTERCOM_BASE_URL") or DEFAULT_BASE_URLS[vendor],
                            headers={"Authorization": f"Bearer {env['CS_INTERCOM_TOKEN']}", "Intercom-Version": "2.11"})  # fmt: skip
    return VendorClient(vendor, env.get("CS_MIXPANEL_BASE_URL") or DEFAULT_BASE_URLS[vendor],
                        auth=(env["CS_MIXPANEL_USERNAME"], env["CS_MIXPANEL_SECRET"]))  # fmt: skip


async def run_sync(ingestion: Ingestion, vendor: str, settings: Settings, lookback_days: int) -> BatchReport:
    client = vendor_client(vendor, settings)
    try:
        return await ingestion.sync(vendor, client, lookback_days=lookback_days)
    except (VendorError, InvalidInputError) as exc:
        ingestion.record_failure(vendor, "sync", str(exc))
        raise
    finally:
        await client.aclose()


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    if args.source not in SYNC_SOURCES:
        raise InvalidInputError("SOURCE", f"no pull sync for {args.source!r}; available: {', '.join(SYNC_SOURCES)}"
                                " (SendGrid sends webhooks only)")  # fmt: skip
    console = Console(highlight=False)
    with open_services(settings) as svc:
        ingestion = svc.ingestion(actor="cli")
        try:
            report = anyio.run(run_sync, ingestion, args.source, settings, args.lookback_days)
        except VendorError as exc:
            console.print(f"[red]sync {args.source} failed[/]: {exc}", style=None)
            return 1
    print_batch(console, report, args.json, f"sync {args.source}")
    return 0


def add_commands(sub: Any) -> None:
    sync = sub.add_parser("sync", help="pull new records from a vendor: cs sync zendesk|intercom|mixpanel")
    sync.add_argument("source", metavar="SOURCE", help=f"one of: {', '.join(SYNC_SOURCES)}")
    sync.add_argument("--lookback-days", type=int, default=90, help="how far back a first sync reaches (default 90)")
    sync.add_argument("--json", action="store_true")
    sync.set_defaults(func=cmd_sync)
