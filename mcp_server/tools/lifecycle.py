"""manage_lifecycle_stages: a customer's stage now or as of an instant (and why), its stage
history with time in stage, stage overrides with a reason and an expiry, and the book per
stage. The rules live in projections/lifecycle.py (docs/lifecycle.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from mcp_server.services import Services
from mcp_server.tools.common import after_write, command_meta, future_note, instant, read_ready, services, tool_errors
from projections.cursor import decode_cursor, encode_cursor
from projections.lifecycle import NOTES, STAGE_ORDER, Period, Stage, parse_utc, time_in_stage
from projections.lifecycle_query import stage_history, stages_at

StageName = Literal["onboarding", "adoption", "mature", "renewal", "expansion", "at_risk", "churned"]


class StageOverrideOut(BaseModel):
    stage: StageName
    reason: str
    author: str
    set_at: datetime
    expires_at: datetime = Field(description="the override ends here; the derived stage applies again after it")


class CustomerStage(BaseModel):
    id: str
    client_id: str
    name: str
    stage: StageName
    rule: str = Field(description="what decided: override, churned, at_risk, renewal, onboarding, expansion, adoption, mature")
    because: str = Field(description="the rule's reason, e.g. 'renewal_date 2027-01-31 within 90 days'")
    since: datetime | None = Field(default=None, description="when the customer entered this stage (not given by action 'list')")
    days_in_stage: float | None = Field(default=None, description="days from since to as_of")
    derived_stage: StageName = Field(description="the stage the rules give without the override")
    derived_because: str
    override: StageOverrideOut | None = Field(default=None, description="the override in force, with its reason, author and expiry")


class StagePeriod(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    stage: StageName
    rule: str
    from_: datetime = Field(alias="from")
    to: datetime = Field(description="start of the next period, or as_of for the ongoing one")
    days: float
    because: str = Field(description="the rule or event that moved the customer into this stage")
    ongoing: bool


class LifecycleResult(BaseModel):
    action: Literal["get", "history", "override", "list"]
    as_of: datetime
    customer: CustomerStage | None = Field(default=None, description="the customer asked about (get, history, override)")
    items: list[StagePeriod | CustomerStage] = Field(
        default_factory=list, description="history: the periods, oldest first; list: the customers, by stage then key"
    )
    next_cursor: str | None = None
    counts: dict[str, int] | None = Field(default=None, description="list: customers per stage across the whole book")
    time_in_stage: dict[str, float] | None = Field(default=None, description="history: total days in each stage")
    recorded: dict[str, Any] | None = Field(default=None, description="override: what was recorded, and the override it replaces")
    position: int | None = Field(default=None, description="override: log position of the write")
    notes: list[str] = Field(default_factory=list)


def _names(svc: Services, ids: list[str] | None = None) -> dict[str, tuple[str, str]]:
    where = f" WHERE customer_id IN ({', '.join('?' * len(ids))})" if ids else ""
    with svc.store.snapshot() as tx:
        rows = tx.fetchall(f"SELECT customer_id, external_key, name FROM cs_customers_v1{where}", ids or [])
    return {r["customer_id"]: (r["external_key"], r["name"]) for r in rows}


def _out(cid: str, stage: Stage, names: dict[str, tuple[str, str]], since: datetime | None = None,
         as_of: datetime | None = None) -> CustomerStage:  # fmt: skip
    key, name = names[cid]
    override = None
    if stage.override:
        o = stage.override
        override = StageOverrideOut(stage=o["stage"], reason=o["reason"], author=o["author"],
                                    set_at=parse_utc(o["set_at"]), expires_at=parse_utc(o["expires_at"]))  # fmt: skip
    days = round((as_of - since).total_seconds() / 86400, 2) if since and as_of else None
    return CustomerStage(id=cid, client_id=key, name=name, stage=stage.stage, rule=stage.rule,  # type: ignore[arg-type]
                         because=stage.because, since=since, days_in_stage=days, derived_stage=stage.derived,  # type: ignore[arg-type]
                         derived_because=stage.derived_because, override=override)  # fmt: skip


def _period(p: Period) -> StagePeriod:
    return StagePeriod.model_validate({"stage": p.stage, "rule": p.rule, "from": p.start, "to": p.end, "days": p.days,
                                       "because": p.because, "ongoing": p.ongoing})  # fmt: skip


def _need(value: Any, name: str, action: str, hint: str) -> Any:
    if value in (None, ""):
        raise ToolError(f"{name}: required for action '{action}'; {hint}")
    return value


def customer_stage(svc: Services, client_id: str, as_of: datetime, history: bool, limit: int,
                   cursor: str | None) -> LifecycleResult:  # fmt: skip
    """get (history=False) and history (history=True) for one customer."""
    customer_id = svc.app.resolve(client_id)
    found = stage_history(svc.store, customer_id, as_of, current_only=not history)
    if found is None:
        raise ToolError(f"as_of: {client_id!r} was not registered yet at {as_of.isoformat()}; pass a later instant")
    names = _names(svc, [found.customer_id])
    current = found.periods[-1]
    out = _out(found.customer_id, found.current, names, current.start, as_of)
    action: Literal["get", "history"] = "history" if history else "get"
    bands = (f"health bands per day: {found.bands_stored} from the stored daily history, "
             f"{found.bands_computed} computed from the inputs")  # fmt: skip
    notes = [*NOTES, bands]
    if not history:
        return LifecycleResult(action=action, as_of=as_of, customer=out, notes=list(NOTES))
    start = int((decode_cursor(cursor, 1) or [0])[0])
    page = found.periods[start : start + limit]
    next_cursor = encode_cursor(start + limit) if start + limit < len(found.periods) else None
    totals = time_in_stage(found.periods)
    return LifecycleResult(action=action, as_of=as_of, customer=out, items=[_period(p) for p in page],
                           next_cursor=next_cursor, time_in_stage=totals, notes=notes)  # fmt: skip


def book_by_stage(svc: Services, as_of: datetime, stage: str | None, limit: int, cursor: str | None) -> LifecycleResult:
    stages = stages_at(svc.store, as_of)
    names = _names(svc)
    counts = {s: 0 for s in STAGE_ORDER}
    for st in stages.values():
        counts[st.stage] += 1
    rows = sorted(((STAGE_ORDER.index(st.stage), names[cid][0], cid) for cid, st in stages.items()
                   if stage is None or st.stage == stage))  # fmt: skip
    after = decode_cursor(cursor, 2)
    if after is not None:
        rows = [r for r in rows if (r[0], r[1]) > (after[0], after[1])]
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1][0], page[-1][1]) if len(rows) > limit else None
    return LifecycleResult(action="list", as_of=as_of, items=[_out(cid, stages[cid], names) for _, _, cid in page],
                           next_cursor=next_cursor, counts=counts, notes=list(NOTES))  # fmt: skip


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="Lifecycle stages", read_only_hint=False, destructive_hint=False,
                                          idempotent_hint=False))  # fmt: skip
    def manage_lifecycle_stages(
        ctx: Context,
        action: Literal["get", "history", "override", "list"],
        client_id: Annotated[str | None, Field(max_length=64, description="external key or customer id (get, history, override)")] = None,
        stage: Annotated[StageName | None, Field(description="override: the stage to set; list: only customers in this stage")] = None,
        reason: Annotated[str | None, Field(min_length=3, max_length=500, description="override: why (kept with the override)")] = None,
        expires_at: Annotated[datetime | None, Field(description="override: when it ends (must be in the future; no zone = UTC)")] = None,
        as_of: Annotated[datetime | None, Field(description="get, history, list: the instant to answer for (default now; no zone = UTC)")] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="history, list: page size")] = 50,
        cursor: Annotated[str | None, Field(max_length=512, description="history, list: next_cursor of the previous page")] = None,
    ) -> LifecycleResult:
        """Lifecycle stages (onboarding, adoption, expansion, mature, renewal, at_risk, churned),
        derived from events: override > churned > at_risk (red health) > renewal (renewal_date
        within 90 days, or passed with no renewal or churn recorded) > onboarding (first 90 days) >
        expansion > adoption (first year) > mature.
        Actions: 'get' a customer's stage as of an instant, since when, days in stage, the rule
        that put it there and any active override; 'history' its stage periods (from, to, days,
        because) and total time in each stage; 'override' set a stage by hand with a reason and a
        future expires_at (the author is the calling client; the derived stage applies again
        after it); 'list' customers per stage (counts and paginated members)."""
        svc = services(ctx)
        moment = instant(as_of)
        with tool_errors():
            if action == "override":
                return _override(ctx, svc, client_id, stage, reason, expires_at)
            read_ready(svc)
            if action == "list":
                result = book_by_stage(svc, moment, stage, limit, cursor)
            else:
                key = _need(client_id, "client_id", action, "pass the external key (e.g. 'acme-corp') or the customer id")
                result = customer_stage(svc, key, moment, action == "history", limit, cursor)
        note = future_note(as_of=as_of)
        if note:
            result.notes.append(note)
        return result


def _override(ctx: Context, svc: Services, client_id: str | None, stage: str | None, reason: str | None,
              expires_at: datetime | None) -> LifecycleResult:  # fmt: skip
    key = _need(client_id, "client_id", "override", "pass the external key (e.g. 'acme-corp') or the customer id")
    stage = _need(stage, "stage", "override", f"one of: {', '.join(STAGE_ORDER)}")
    reason = _need(reason, "reason", "override", "say why the stage is set by hand (3-500 characters)")
    expires = instant(_need(expires_at, "expires_at", "override", "give a future instant at which the override ends"))
    meta = command_meta(ctx, "manage_lifecycle_stages")
    before = svc.app.get_customer(key).stage_override
    replaces = before if before and parse_utc(before["expires_at"]) > meta.occurred_at else None
    result = svc.app.override_stage(key, {"stage": stage, "reason": reason, "expires_at": expires}, meta.actor, meta)
    after_write(svc, result.position)
    read_ready(svc)
    now = datetime.now(UTC)
    cid = str(result.customer_id)
    current = stages_at(svc.store, now, [UUID(cid)])[cid]
    recorded = {"stage": stage, "reason": reason, "author": meta.actor, "set_at": meta.occurred_at.isoformat(),
                "expires_at": expires.isoformat(), "replaces": replaces}  # fmt: skip
    return LifecycleResult(action="override", as_of=now, customer=_out(cid, current, _names(svc, [cid])),
                           recorded=recorded, position=result.position, notes=list(NOTES))  # fmt: skip
