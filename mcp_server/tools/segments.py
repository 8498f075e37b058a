"""Segment tools: segment_customers (define / update / delete / list / members) and
segment_by_value_tier. Definitions are events (events/segments.py); membership is computed at
read time from the current views (projections/segment_members.py), so it is always current."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from events.segment_text import to_text
from events.segments import FIELDS, SegmentResult, fields_used
from mcp_server.services import Services
from mcp_server.tools.common import after_write, command_meta, read_ready, services, tool_errors
from projections.cursor import decode_cursor, encode_cursor
from projections.segment_members import book_rows, definition, members, page, population, totals
from projections.segments import SegmentsView, unmatched_values
from projections.value_tiers import value_tiers

DESCRIPTION_HELP = 'what the segment is for; "" clears it on update'
RULES_HELP = (
    'JSON rule, e.g. {"all": [{"field": "arr", "op": ">=", "value": 50000}, {"any": [{"field": "band", "op": "in", '
    '"value": ["red", "yellow"]}, {"field": "nps", "op": "<=", "value": 6}]}]}, or the same as text: '
    "arr >= 50000 and (band in [red, yellow] or nps <= 6). Fields: "
    + ", ".join(f"{k} ({v.kind})" for k, v in FIELDS.items())
    + ". Ops: = != < <= > >= in (ordering only on numbers); combine with all/any/not (and/or/not)."
)
BOUNDS_HELP = "3 increasing ARR thresholds separating starter, growth, enterprise, strategic; default [10000, 50000, 150000]"
SegmentName = Annotated[str | None, Field(max_length=80, description="segment name (case and spacing do not matter)")]


class Totals(BaseModel):
    count: int
    arr: float = Field(description="total ARR of the members that have one")
    mean_health: float | None = Field(description="mean health score of the scored members; null when none is scored")
    scored: int = Field(description="members with a health score")
    bands: dict[str, int] = Field(description="members per health band: green, yellow, red, unknown")


class SegmentOut(BaseModel):
    name: str
    description: str | None
    rules: dict[str, Any] = Field(description="the rule in its canonical JSON form")
    rules_text: str = Field(description="the same rule in the compact text form")
    population: Literal["active customers", "all customers"] = Field(
        description="who the rules are evaluated over: active customers unless the rules test status")
    defined_at: datetime | None = None
    updated_at: datetime | None = None
    totals: Totals | None = Field(None, description="membership now (null for a deleted segment)")


class Member(BaseModel):
    id: str
    client_id: str
    name: str
    status: Literal["active", "churned"]
    tier: str | None
    arr: float | None
    health: float | None = Field(description="health score now; null until a component has data")
    band: Literal["green", "yellow", "red", "unknown"]
    nps: int | None = Field(description="latest NPS answer (0-10)")
    days_to_renewal: int | None


class SegmentReport(BaseModel):
    action: Literal["define", "update", "delete", "list", "members"]
    status: Literal["defined", "updated", "unchanged", "deleted", "ok"]
    position: int | None = Field(None, description="log position of the write; null when nothing was recorded")
    changes: list[str] = Field(default_factory=list, description="update: what changed (rules, description)")
    segment: SegmentOut | None = Field(None, description="define / update / delete / members: the segment")
    segments: list[SegmentOut] | None = Field(None, description="list: the segments, by name, with their totals")
    members: list[Member] | None = Field(None, description="members: this page, largest ARR first")
    next_cursor: str | None = None
    notes: list[str] = Field(default_factory=list, description="define / update / members: text values in the rules "
                             "that no customer has (a typo empties a segment without a word)")  # fmt: skip
    as_of: datetime


class ValueTier(BaseModel):
    tier: Literal["starter", "growth", "enterprise", "strategic"]
    min_arr: float = Field(description="inclusive lower bound")
    max_arr: float | None = Field(description="exclusive upper bound; null for the top tier")
    service_level: str = Field(description="the coverage this deployment gives the tier (policy, not data)")
    count: int
    arr: float
    health_mix: dict[str, int] = Field(description="customers per band: green, yellow, red, unknown")
    mean_health: float | None = Field(description="mean score of the scored customers; null when none is scored")
    scored: int


class ValueTierReport(BaseModel):
    bounds: list[float]
    tiers: list[ValueTier]
    active_customers: int
    active_arr: float
    without_arr: dict[str, Any] = Field(description="active customers with no ARR recorded (in no tier): count, client_ids")
    policy_note: str
    as_of: datetime


def _out(name: str, description: str | None, rules: dict[str, Any], rows: list[dict[str, Any]] | None,
         row: dict[str, Any] | None = None) -> SegmentOut:  # fmt: skip
    stamps = {"defined_at": row["defined_at"], "updated_at": row["updated_at"]} if row else {}
    return SegmentOut(name=name, description=description, rules=rules, rules_text=to_text(rules),
                      population=population(rules),  # type: ignore[arg-type]
                      totals=Totals(**totals(members(rows, rules))) if rows is not None else None, **stamps)  # fmt: skip


def _member(r: dict[str, Any]) -> Member:
    return Member(id=r["customer_id"], **{k: r[k] for k in Member.model_fields if k != "id"})


def _written(svc: Services, action: str, result: SegmentResult, now: datetime) -> SegmentReport:
    after_write(svc, result.position)
    read_ready(svc)
    with_stage = "stage" in fields_used(result.rules)
    rows = None if result.status == "deleted" else book_rows(svc.store, now, with_stage=with_stage)
    seg = _out(result.name, result.description, result.rules, rows, SegmentsView(svc.store).get(result.name))
    return SegmentReport(action=action, status=result.status, position=result.position,  # type: ignore[arg-type]
                         changes=result.changes, segment=seg, as_of=now,
                         notes=unmatched_values(result.rules, rows) if rows is not None else [])  # fmt: skip


def _require(value: Any, name: str, action: str) -> Any:
    if value is None:
        raise ToolError(f"{name}: required for action {action!r}" + (f"; {RULES_HELP}" if name == "rules" else ""))
    return value


def segment_action(svc: Services, ctx: Context, action: str, name: str | None, rules: dict[str, Any] | str | None,
                   description: str | None, limit: int, cursor: str | None) -> SegmentReport:  # fmt: skip
    now = datetime.now(timezone.utc)
    meta = command_meta(ctx, "segment_customers")
    if action == "define":
        result = svc.app.define_segment(_require(name, "name", action), _require(rules, "rules", action), description, meta)
        return _written(svc, action, result, now)
    if action == "update":
        changes = {k: v for k, v in (("rules", rules), ("description", description)) if v is not None}
        if not changes:
            raise ToolError("rules or description: give at least one to change (description \"\" clears it)")
        return _written(svc, action, svc.app.update_segment(_require(name, "name", action), changes, meta), now)
    if action == "delete":
        return _written(svc, action, svc.app.delete_segment(_require(name, "name", action), meta), now)
    read_ready(svc)
    if action == "members":
        found = definition(svc.store, _require(name, "name", action))
        stored: dict[str, Any] = found["rules"]
        book = book_rows(svc.store, now, with_stage="stage" in fields_used(stored))
        rows = members(book, stored)
        chunk, next_cursor = page(rows, limit, cursor)
        seg = _out(found["name"], found["description"], stored, None, found)
        seg.totals = Totals(**totals(rows))
        return SegmentReport(action="members", status="ok", segment=seg, members=[_member(r) for r in chunk],
                             next_cursor=next_cursor, as_of=now, notes=unmatched_values(stored, book))  # fmt: skip
    defined = SegmentsView(svc.store).all()
    after = decode_cursor(cursor, 1)
    if after is not None:
        defined = [d for d in defined if d["name_key"] > str(after[0])]
    chunk = defined[:limit]
    with_stage = any("stage" in fields_used(d["rules"]) for d in chunk)
    rows = book_rows(svc.store, now, with_stage=with_stage) if chunk else []
    next_cursor = encode_cursor(chunk[-1]["name_key"]) if len(defined) > limit else None
    out = [_out(d["name"], d["description"], d["rules"], rows, d) for d in chunk]
    return SegmentReport(action="list", status="ok", segments=out, next_cursor=next_cursor, as_of=now)


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="Rule-based segments", read_only_hint=False, destructive_hint=True,
                                          idempotent_hint=False))  # fmt: skip
    def segment_customers(
        ctx: Context,
        action: Literal["define", "update", "delete", "list", "members"],
        name: SegmentName = None,
        rules: Annotated[dict[str, Any] | str | None, Field(description=RULES_HELP)] = None,
        description: Annotated[str | None, Field(max_length=500, description=DESCRIPTION_HELP)] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="page size for list and members")] = 50,
        cursor: Annotated[str | None, Field(max_length=512, description="next_cursor of the previous page")] = None,
    ) -> SegmentReport:
        """Rule-based customer segments. define: record a new segment (name + rules); update:
        change its rules and/or description (the event keeps old and new); delete: remove it;
        list: every segment with its totals now (count, ARR, mean health, band mix); members:
        the customers in one segment now with ARR, health and band, largest ARR first, plus
        totals. Rules compare customer fields (arr, seats, tier, industry, owner, status, domain,
        days_to_renewal, health, band, nps, stage) and combine with all/any/not; a segment
        covers active customers unless its rules test status. Membership is computed from the
        current views at each call, so it follows every recorded change (docs/segments.md)."""
        svc = services(ctx)
        with tool_errors():
            return segment_action(svc, ctx, action, name, rules, description, limit, cursor)

    @mcp.tool(annotations=ToolAnnotations(title="ARR value tiers", read_only_hint=True))
    def segment_by_value_tier(
        ctx: Context,
        bounds: Annotated[list[float] | None, Field(max_length=10, description=BOUNDS_HELP)] = None,
    ) -> ValueTierReport:
        """Active customers grouped into ARR tiers (starter, growth, enterprise, strategic; a
        customer at a bound belongs to the tier above) with, per tier: count, total ARR, health
        mix (green/yellow/red/unknown), mean health, and the service level the tier gets under
        this deployment's coverage policy (tech-touch, pooled CSM, named CSM, executive
        sponsor). Customers without an ARR are counted apart. Use it to check coverage and
        where the revenue and the risk sit."""
        svc = services(ctx)
        now = datetime.now(timezone.utc)
        with tool_errors():
            read_ready(svc)
            report = value_tiers(book_rows(svc.store, now), bounds)
        return ValueTierReport(**report, as_of=now)
