"""The `cs demo` dashboard and the generated tool reference: views rendered for people."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.table import Table

from events.settings import Settings
from mcp_server.services import Services
from projections.base import counted
from projections.health import health_as_of

RENEWAL_WINDOW_DAYS = 90


def collect(svc: Services, today: date | None = None) -> dict[str, Any]:
    """Figures computed from the profile view; nothing here is typed by hand."""
    today = today or date.today()
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = svc.profiles.list(sort="arr", limit=200, cursor=cursor)
        rows += page
        if cursor is None:
            break
    health = health_as_of(svc.store, datetime.now(timezone.utc), [UUID(r["customer_id"]) for r in rows])
    for row in rows:
        row["days_to_renewal"] = (
            (date.fromisoformat(row["renewal_date"]) - today).days if row["renewal_date"] else None
        )
        h = health.get(row["customer_id"])
        row["health"] = h.score if h else None
        row["band"] = h.band if h else "unknown"
        row["driver"] = h.drivers[0] if h and h.drivers else ""
    rows.sort(key=lambda r: (r["status"] != "active", r["health"] if r["health"] is not None else 101))
    active = [r for r in rows if r["status"] == "active"]
    at_risk = [r for r in active if r["band"] in ("red", "yellow")]
    due = [r for r in active if r["days_to_renewal"] is not None and 0 <= r["days_to_renewal"] <= RENEWAL_WINDOW_DAYS]
    # Renewal date passed, customer still active (no renewal moved the date, no churn recorded).
    overdue = [r for r in active if r["days_to_renewal"] is not None and r["days_to_renewal"] < 0]
    return {
        "as_of": today.isoformat(),
        "customers": len(rows),
        "active": len(active),
        "churned": len(rows) - len(active),
        "active_arr": sum(r["arr"] or 0 for r in active),
        "renewals_due": len(due),
        "renewals_due_arr": sum(r["arr"] or 0 for r in due),
        "renewals_overdue": len(overdue),
        "renewals_overdue_arr": sum(r["arr"] or 0 for r in overdue),
        "bands": {b: sum(1 for r in active if r["band"] == b) for b in ("green", "yellow", "red", "unknown")},
        "arr_at_risk": sum(r["arr"] or 0 for r in at_risk),
        "rows": [
            {k: r[k] for k in ("external_key", "name", "tier", "arr", "seats", "renewal_date", "days_to_renewal", "owner",
                               "status", "health", "band", "driver")}
            for r in rows
        ],
    }


def render(console: Console, data: dict[str, Any], settings: Settings) -> None:
    table = Table(title=f"Customers as of {data['as_of']}, riskiest first")
    for column in ("customer", "health", "ARR", "renewal", "days", "owner", "why (yellow and red)"):
        table.add_column(column, justify="right" if column in ("ARR", "days", "health") else "left",
                         no_wrap=not column.startswith("why"))  # fmt: skip
    colours = {"green": "green", "yellow": "yellow", "red": "red", "unknown": "dim"}
    for r in data["rows"]:
        days = r["days_to_renewal"]
        soon = r["status"] == "active" and days is not None and 0 <= days <= RENEWAL_WINDOW_DAYS
        late = r["status"] == "active" and days is not None and days < 0
        churned = r["status"] == "churned"
        score = "—" if r["health"] is None else f"{r['health']:.0f} {r['band']}"
        table.add_row(
            r["name"] + (" [dim](churned)[/]" if churned else ""),
            f"[{colours[r['band']]}]{score}[/]" if not churned else "[dim]churned[/]",
            f"{r['arr']:,.0f}" if r["arr"] is not None else "",
            r["renewal_date"] or "",
            f"[yellow]{days}[/]" if soon else f"[red]{days}[/]" if late else ("" if days is None else str(days)),
            r["owner"] or "",
            r["driver"].split(";")[0] if r["band"] in ("red", "yellow") and not churned else "",
        )
    console.print(table)
    console.print(
        f"{data['customers']} customers, {data['active']} active, {data['churned']} churned; "
        f"active ARR {data['active_arr']:,.0f}; {data['renewals_due']} renewals in the next "
        f"{RENEWAL_WINDOW_DAYS} days worth {data['renewals_due_arr']:,.0f}"
        + (f"; {counted(data['renewals_overdue'], 'renewal')} overdue (date passed, no renewal or churn recorded) "
           f"worth {data['renewals_overdue_arr']:,.0f}" if data["renewals_overdue"] else "") + "."
    )
    b = data["bands"]
    console.print(
        f"Health of active customers: [green]{b['green']} green[/], [yellow]{b['yellow']} yellow[/], "
        f"[red]{b['red']} red[/], {b['unknown']} without data; ARR in yellow or red: {data['arr_at_risk']:,.0f}."
    )
    console.print(f"Data: {settings.backend} under {settings.data_dir}. Next: `cs serve` for an MCP client.")


def tools_markdown(tools: list[Any]) -> str:
    """docs/tools.md, generated from the live registry (`cs tools --markdown`)."""
    lines = [
        "# MCP tools",
        "",
        f"Generated by `cs tools --markdown` from the live registry: {len(tools)} tools.",
        "",
        "| tool | kind | description |",
        "|---|---|---|",
    ]
    for t in tools:
        a = t.annotations
        kind = "read" if a and a.read_only_hint else ("command, destructive" if a and a.destructive_hint else "command")
        description = " ".join((t.description or "").split())
        lines.append(f"| `{t.name}` | {kind} | {description} |")
    return "\n".join(lines) + "\n"
