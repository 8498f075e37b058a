"""track_adoption_milestones: define, delete and list adoption milestones, and see which
customers reached each one and when (computed from the usage views, projections/milestones.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from events.milestones import describe, normalise_name
from mcp_server.services import Services
from mcp_server.tools.common import after_write, command_meta, read_ready, services, tool_errors, unseen_features
from projections.lifecycle import parse_utc
from projections.milestones import definitions, progress, reached_on
from projections.usage import has_usage_before

RULE_HELP = ('{"metric": "active_users_30d" | "active_days_30d" | "events_30d" | "distinct_features_30d", '
             '"op": ">=", "value": 5}, or {"feature": "Created Report"} (first use), or '
             '{"feature": "Created Report", "min_uses": 10} (cumulative uses)')  # fmt: skip


class MilestoneOut(BaseModel):
    name: str
    rule: dict[str, Any]
    description: str = Field(description="the rule in words")
    defined_at: datetime | None = None
    defined_by: str | None = None
    reached: bool | None = Field(default=None, description="status with client_id: whether the customer reached it")
    reached_on: date | None = Field(default=None, description="status with client_id: the first UTC day the condition held")
    progress: dict[str, Any] | None = Field(default=None, description="status with client_id: where the customer stands today")
    reached_count: int | None = Field(default=None, description="status without client_id: customers that reached it")
    first_reached_on: date | None = Field(default=None, description="status without client_id: the earliest reached date")


class MilestonesResult(BaseModel):
    action: Literal["define", "delete", "list", "status"]
    client_id: str | None = None
    status: Literal["created", "updated", "unchanged", "deleted"] | None = Field(default=None, description="define, delete")
    position: int | None = Field(default=None, description="log position of the write; null when nothing was recorded")
    items: list[MilestoneOut] = Field(default_factory=list)
    next_cursor: str | None = None
    customers_total: int | None = Field(default=None, description="status without client_id: customers in the book")
    notes: list[str] = Field(default_factory=list)


def _out(row: dict[str, Any]) -> MilestoneOut:
    return MilestoneOut(name=row["name"], rule=row["rule"], description=describe(row["rule"]),
                        defined_at=parse_utc(row["defined_at"]), defined_by=row["defined_by"])  # fmt: skip


def _selected(svc: Services, name: str | None) -> list[dict[str, Any]]:
    with svc.store.snapshot() as tx:
        rows = definitions(tx)
    if name is None:
        return rows
    wanted = normalise_name(name)
    rows = [r for r in rows if r["name"].lower() == wanted]
    if not rows:
        raise ToolError(f"name: no milestone named {name[:100]!r}; action 'list' shows the defined ones")
    return rows


def milestone_status(svc: Services, name: str | None, client_id: str | None) -> MilestonesResult:
    rows = _selected(svc, name)
    notes = [] if rows else ["no milestones defined yet; define one with action 'define'"]
    today = datetime.now(UTC).date()
    if client_id:
        customer_id = svc.app.resolve(client_id)
        cid = str(customer_id)
        items = []
        with svc.store.snapshot() as tx:
            if not has_usage_before(tx, customer_id, date.max):
                notes.append("no usage data for this customer (is its mixpanel_account_id set?): nothing is reached yet")
            for row in rows:
                day = reached_on(tx, row["rule"], cid).get(cid)
                out = _out(row)
                out.reached, out.reached_on = day is not None, date.fromisoformat(day) if day else None
                out.progress = progress(tx, row["rule"], cid, today)
                items.append(out)
        return MilestonesResult(action="status", client_id=client_id, items=items, notes=notes)
    items = []
    with svc.store.snapshot() as tx:
        known = {r["customer_id"] for r in tx.fetchall("SELECT customer_id FROM cs_customers_v1")}
        for row in rows:
            days = [d for c, d in reached_on(tx, row["rule"]).items() if c in known]
            out = _out(row)
            out.reached_count = len(days)
            out.first_reached_on = date.fromisoformat(min(days)) if days else None
            items.append(out)
    return MilestonesResult(action="status", items=items, customers_total=len(known), notes=notes)


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="Adoption milestones", read_only_hint=False, destructive_hint=False,
                                          idempotent_hint=True))  # fmt: skip
    def track_adoption_milestones(
        ctx: Context,
        action: Literal["define", "delete", "list", "status"],
        name: Annotated[str | None, Field(max_length=100, description="define, delete: the milestone; status: only this one")] = None,
        rule: Annotated[dict[str, Any] | None, Field(description=f"define: {RULE_HELP}")] = None,
        client_id: Annotated[str | None, Field(max_length=64, description="status: one customer (external key or id); omit for the whole book")] = None,
    ) -> MilestonesResult:
        """Adoption milestones such as "5 active users" or "used reports", computed from product
        usage events. 'define' a milestone by name and rule (a 30-day metric threshold, a
        feature's first use, or a feature's cumulative uses; defining an existing name changes
        its rule); 'delete' one; 'list' the definitions; 'status' for one customer (client_id):
        each milestone reached or not, the first UTC day it was reached, and where the customer
        stands today, or for the whole book: how many customers reached each milestone."""
        svc = services(ctx)
        with tool_errors():
            if action == "define":
                if name is None:
                    raise ToolError("name: required for action 'define', e.g. '5 active users'")
                feature = rule.get("feature") if isinstance(rule, dict) else None
                warnings = unseen_features(svc, [("rule.feature", feature)]) if isinstance(feature, str) and feature.strip() else []
                status, position = svc.app.define_milestone(name, rule, command_meta(ctx, "track_adoption_milestones"))
                after_write(svc, position)
                read_ready(svc)
                return MilestonesResult(action="define", status=status, position=position,  # type: ignore[arg-type]
                                        items=[_out(r) for r in _selected(svc, name)], notes=warnings)  # fmt: skip
            if action == "delete":
                if name is None:
                    raise ToolError("name: required for action 'delete'")
                position = svc.app.delete_milestone(name, command_meta(ctx, "track_adoption_milestones"))
                after_write(svc, position)
                return MilestonesResult(action="delete", status="deleted", position=position)
            read_ready(svc)
            if action == "list":
                return MilestonesResult(action="list", items=[_out(r) for r in _selected(svc, None)])
            return milestone_status(svc, name, client_id)
