"""`cs verify` and `cs replay`, and the guard that keeps `cs rebuild` from re-linking a tampered log.

Exit codes follow the CLI's contract: 0 success, 2 bad input (one line naming the flag),
1 failure — a broken hash chain is a failure: `cs verify` exits 1 with
``broken at position N: reason`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from rich.table import Table

from events.errors import CustomerNotFoundError, InvalidInputError
from events.settings import Settings
from mcp_server.cli import BadInput, _console
from mcp_server.services import Services, open_services
from mcp_server.tools.governance import AuditTrailReport, StateAsOf, audit_report, state_as_of
from projections.audit import NAME as AUDIT_CHAIN
from projections.audit import verify_chain


class AuditChainBrokenError(RuntimeError):
    """The hash chain is broken: rebuilding it would re-link the tampered log."""


def parse_time(flag: str, text: str | None) -> datetime | None:
    """An ISO 8601 instant (a date means its midnight; no zone means UTC), or BadInput naming the flag."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"{flag}: {text!r} is not an ISO 8601 time (e.g. 2026-03-01T09:00:00Z)") from None


# ------------------------------------------------------------------------------ verify
def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    with open_services(settings, run_projections=False) as svc:
        report = audit_report(svc)  # links new events first when no other process runs the chain
    if args.json:
        print(json.dumps(report.model_dump()))
    else:
        _print_verify(report)
    if not report.ok:
        print(f"cs verify: {report.message}", file=sys.stderr)
        return 1
    return 0


def _print_verify(report: AuditTrailReport) -> None:
    console = _console()
    table = Table("checked", "head", "linked up to", "unverified", "status", title="Audit trail (hash chain)")
    status = "[green]intact[/]" if report.ok else f"[red]broken at position {report.first_broken}[/]"
    table.add_row(str(report.checked), str(report.head), str(report.linked), str(report.unverified), status)
    console.print(table)
    console.print(report.message)


# ------------------------------------------------------------------------------ replay
def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    as_of = parse_time("--as-of", args.as_of)
    known_at = parse_time("--known-at", args.known_at)
    assert as_of is not None
    with open_services(settings) as svc:  # the health and stage come from the views: fold what is new
        try:
            result = state_as_of(svc, args.customer, as_of, known_at)
        except (CustomerNotFoundError, InvalidInputError) as exc:  # name the flag, not the tool argument
            raise BadInput(f"--customer: {str(exc).removeprefix('client_id: ')}") from None
    if args.json:
        print(result.model_dump_json())
    else:
        _print_replay(result)
    return 0


def _print_replay(result: StateAsOf) -> None:
    console = _console()
    known = f", as known at {result.known_at.isoformat()}" if result.known_at else ""
    console.print(f"[bold]{result.client_id}[/] as of {result.as_of.isoformat()}{known}")
    state = result.state
    if state is None:
        console.print(result.message)
        return
    fields = Table("field", "value", title=f"{state.profile.get('name')} ({state.status})")
    for key, value in {**state.profile, "churned_on": state.churned_on, "churn_reason": state.churn_reason}.items():
        fields.add_row(key, "" if value is None else str(value))
    score = "no score" if state.health.score is None else f"score {state.health.score:.0f}"
    why = "; ".join(state.health.drivers) or state.health.note or ""
    fields.add_row("health", f"{state.health.band} ({score})" + (f": {why}" if why else ""))
    if state.stage:
        fields.add_row("stage", state.stage)
    console.print(fields)
    if state.contacts:
        contacts = Table("name", "email", "role", "primary", title="Contacts")
        for c in state.contacts:
            contacts.add_row(c.name or "", c.email or "", c.role or "", "yes" if c.primary else "")
        console.print(contacts)
    events = Table("position", "type", "occurred_at", "recorded_at", title="Events replayed")
    for e in state.events:
        events.add_row(str(e.position), e.type, e.occurred_at.isoformat(), e.recorded_at.isoformat())
    console.print(events)


# ----------------------------------------------------------------------- rebuild guard
def rebuild_guard(svc: Services, names: list[str] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """What `cs rebuild` may rebuild. Without a name: everything but the audit chain (a
    rebuild would re-link the log as it is now, hiding tampering), reported as skipped.
    Named explicitly: the chain is verified first, and a broken chain is refused."""
    if names is None:
        selected = [n for n in svc.engine.runners if n != AUDIT_CHAIN]
        skipped = [
            {
                "projection": AUDIT_CHAIN,
                "reason": f"not rebuilt by default; `cs verify`, then `cs rebuild {AUDIT_CHAIN}`",
            }
        ]
        return selected, skipped if AUDIT_CHAIN in svc.engine.runners else []
    if AUDIT_CHAIN in names:
        report = verify_chain(svc.store, svc.app.recorder)
        if not report.ok:
            raise AuditChainBrokenError(
                f"refusing to rebuild {AUDIT_CHAIN}: the chain is {report.summary()}; a rebuild would re-link "
                "the tampered log (investigate and restore the event log first; see docs/runbook.md)"
            )
    return names, []


def add_commands(subparsers: Any) -> None:
    """Add `verify` and `replay` to the `cs` parser."""
    verify = subparsers.add_parser("verify", help="verify the event log's hash chain (exit 1 when it is broken)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify)

    replay = subparsers.add_parser("replay", help="a customer's state as of a past instant, replayed from the log")
    replay.add_argument("--customer", required=True, metavar="ID", help="external key or customer id")
    replay.add_argument("--as-of", required=True, metavar="ISO_TIME", help="e.g. 2026-03-01T09:00:00Z (no zone = UTC)")
    replay.add_argument("--known-at", metavar="ISO_TIME", help="leave out events recorded after this instant")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(func=cmd_replay)
