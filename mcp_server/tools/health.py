"""Health tools: calculate_health_score, configure_health_scorecard, override_health_score,
backtest_health_model. All of them read the views built from events (see projections/health.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from events.errors import CustomerNotFoundError
from mcp_server.services import Services
from mcp_server.tools.common import (after_write, command_meta, future_note, instant, joined, read_ready, services,
                                     tool_errors, unseen_features)
from projections.backtest import backtest
from projections.health import Health, compare, health_at, trend_of
from projections.store import Tx
from projections.health_history import history_rows

ClientId = Annotated[str, Field(min_length=1, max_length=64, description="external key or customer id")]


class ComponentOut(BaseModel):
    name: str
    score: float | None = Field(description="0-100; null when this component has no data")
    weight: float
    has_data: bool
    inputs: dict[str, Any]
    reason: str


class HealthScore(BaseModel):
    client_id: str
    name: str
    score: float | None
    computed_score: float | None = Field(description="the model's score before any override")
    band: Literal["green", "yellow", "red", "unknown"]
    confidence: float = Field(description="share of the scorecard's weight whose components had data")
    components: list[ComponentOut] | None = Field(description="null in a book listed with include_components false")
    drivers: list[str]
    trend: dict[str, Any]
    override: dict[str, Any] | None
    scorecard: dict[str, Any] | None = Field(description="weights, bands and since when; null as components")
    as_of: datetime
    note: str | None
    comparison: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None


class HealthReport(BaseModel):
    as_of: datetime
    customer: HealthScore | None = Field(None, description="the one customer asked for (client_id given)")
    items: list[HealthScore] = Field(default_factory=list, description="the book, worst first (no client_id)")
    next_cursor: str | None = None
    summary: dict[str, int] | None = Field(None, description="customers per band across the whole selection")
    note: str | None = Field(None, description="set when as_of or compare_to is after now (the answer is not a forecast), "
                             "when nobody was registered yet at as_of, or when the book's usage data stops before "
                             "as_of (nobody has usage on the days just before it)")  # fmt: skip


def _out(h: Health, prior: Health | None, names: dict[str, tuple[str, str]], components: bool = True) -> HealthScore:
    key, name = names[h.customer_id]
    data = h.as_dict()
    return HealthScore(client_id=key, name=name, trend=trend_of(h, prior), as_of=datetime.fromisoformat(h.as_of),
                       components=[ComponentOut(**c) for c in data["components"]] if components else None,
                       scorecard=data["scorecard"] if components else None,
                       **{k: data[k] for k in ("score", "computed_score", "band", "confidence", "drivers", "override",
                                               "note")})  # fmt: skip


def _names_in(tx: Tx, customer_id: str | None = None) -> dict[str, tuple[str, str]]:
    where, params = (" WHERE customer_id = ?", [customer_id]) if customer_id else ("", [])
    return {r["customer_id"]: (r["external_key"], r["name"]) for r in tx.fetchall(
        f"SELECT customer_id, external_key, name FROM cs_customers_v1{where}", params)}  # fmt: skip


def one_customer(svc: Services, client_id: str, as_of: datetime, compare_to: datetime | None,
                 history: bool) -> tuple[HealthScore, str | None]:  # fmt: skip
    """The customer's health, and the book's usage note as of ``as_of`` (see projections.health.usage_note)."""
    cid = svc.app.candidate_id(client_id)
    instants = [as_of, as_of - timedelta(days=30), *([compare_to] if compare_to is not None else [])]
    with svc.store.snapshot() as tx:  # the name and every instant from one consistent read, in one pass
        names = _names_in(tx, str(cid))
        if not names:  # (the views are at the head of the log: read_ready)
            raise CustomerNotFoundError(client_id)
        now, prior, *other = (scores.get(str(cid)) for scores in health_at(tx, instants, [cid]))
    if now is None:
        raise ToolError(f"as_of: {client_id!r} was not registered yet at {as_of.isoformat()}; pass a later instant")
    out = _out(now, prior, names)
    if compare_to is not None:
        out.comparison = compare(other[0], now) if other[0] else {"note": f"not registered yet at {compare_to.isoformat()}"}
    if history:
        out.history = [{"day": r["day"], "score": r["score"], "band": r["band"], "confidence": r["confidence"]}
                       for r in history_rows(svc.store, cid)] or None  # fmt: skip
    return out, now.usage_note


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="Health score", read_only_hint=True))
    def calculate_health_score(
        ctx: Context,
        client_id: ClientId | None = None,
        as_of: datetime | None = None,
        compare_to: Annotated[datetime | None, Field(description="explain the change from this instant to as_of")] = None,
        include_history: bool = False,
        band: Literal["green", "yellow", "red", "unknown"] | None = None,
        include_churned: bool = False,
        limit: Annotated[int, Field(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Field(max_length=20, pattern=r"^\d+$")] = None,
        include_components: Annotated[bool, Field(description="the whole book: false leaves out each customer's "
                                                  "components and scorecard (about a fifth of the size); the score, "
                                                  "band, confidence, drivers, trend and override stay")] = True,  # fmt: skip
    ) -> HealthReport:
        """Health of one customer (client_id) or of the whole book (worst first), now or as of
        a past instant: score 0-100, band, the six components with their inputs and weights,
        confidence, top drivers, 30-day trend and any active override. With compare_to, explains
        the change between the two instants component by component. Computed from events only;
        components without data are left out and lower the confidence. For a first look at the
        whole book, include_components=false keeps each customer to its score, band, drivers and
        trend; then ask for one customer (client_id) to see its components."""
        svc = services(ctx)
        moment = instant(as_of)
        note = future_note(as_of=as_of, compare_to=compare_to)
        with tool_errors():
            read_ready(svc)
            if client_id:
                one, usage = one_customer(svc, client_id, moment, instant(compare_to) if compare_to else None, include_history)
                return HealthReport(as_of=moment, customer=one, note=joined(usage, note))
            with svc.store.snapshot() as tx:  # both instants and the names from one consistent read
                scores, prior = health_at(tx, [moment, moment - timedelta(days=30)])
                names = _names_in(tx)
        if not scores:  # nobody registered yet at that instant: say so rather than an empty list
            note = joined(f"no customer was registered before {moment.isoformat()}: nothing to score", note)
        else:  # where the book's usage data stops, if before as_of (the same for every customer)
            note = joined(next(iter(scores.values())).usage_note, note)
        selected = [h for h in scores.values() if include_churned or not h.note or not h.note.startswith("churned")]
        summary: dict[str, int] = {}
        for h in selected:
            summary[h.band] = summary.get(h.band, 0) + 1
        if band:
            selected = [h for h in selected if h.band == band]
        selected.sort(key=lambda h: (h.score is None, h.score if h.score is not None else 0, names[h.customer_id][0]))
        start = int(cursor or 0)
        page = selected[start : start + limit]
        next_cursor = str(start + limit) if start + limit < len(selected) else None
        return HealthReport(as_of=moment, items=[_out(h, prior.get(h.customer_id), names, include_components) for h in page],
                          next_cursor=next_cursor, summary=summary, note=note)  # fmt: skip

    @mcp.tool(annotations=ToolAnnotations(title="Configure the health scorecard", read_only_hint=False,
                                          destructive_hint=False, idempotent_hint=True))  # fmt: skip
    def configure_health_scorecard(
        ctx: Context,
        weights: Annotated[dict[str, float] | None, Field(description="component -> weight (>= 0); components: usage, adoption, support, sentiment, engagement, financial")] = None,
        bands: Annotated[dict[str, float] | None, Field(description='lower bounds, e.g. {"green": 70, "yellow": 40}')] = None,
        key_features: Annotated[list[str] | None, Field(max_length=100, description="features adoption counts; [] = every feature the book used in the last 90 days except Mixpanel's own $ events")] = None,
    ) -> dict[str, Any]:
        """Change the health model's weights, band thresholds or key features. Recorded as an
        event with the previous version, so every past score stays explainable with the model
        of its day. Omitted settings keep their current value. Returns the model now in force.
        Key features are event names as the usage data spells them (case-sensitive): one never
        seen that looks like a seen one ('created report' for 'Created Report') is refused with
        the name to use; one never seen at all is accepted with a warning (every customer counts
        as not using it until it appears)."""
        svc = services(ctx)
        changes = {k: v for k, v in (("weights", weights), ("bands", bands), ("key_features", key_features)) if v is not None}
        warnings: list[str] = []
        with tool_errors():
            if not changes:
                raise ToolError("weights, bands or key_features: pass at least one setting to change")
            if key_features:
                warnings = unseen_features(svc, [(f"key_features[{n}]", f) for n, f in enumerate(key_features)])
            config, position = svc.app.configure_scorecard(changes, command_meta(ctx, "configure_health_scorecard"))
        after_write(svc, position)
        out = {"scorecard": config.model_dump(), "status": "updated" if position else "unchanged", "position": position}
        return {**out, "warnings": warnings} if warnings else out

    @mcp.tool(annotations=ToolAnnotations(title="Override a health score", read_only_hint=False,
                                          destructive_hint=False, idempotent_hint=False))  # fmt: skip
    def override_health_score(
        ctx: Context,
        client_id: ClientId,
        band: Literal["green", "yellow", "red"],
        reason: Annotated[str, Field(min_length=3, max_length=500)],
        expires_at: datetime,
        score: Annotated[float | None, Field(ge=0, le=100)] = None,
    ) -> dict[str, Any]:
        """Set a customer's band (and optionally score) by hand until expires_at, with a reason;
        the author is the calling client. The computed score stays visible beside it, the
        override is listed in every explanation while active, and ends at its expiry. A new
        override records the one it replaces. (Beyond the 199OS catalogue: overrides need a tool.)"""
        svc = services(ctx)
        meta = command_meta(ctx, "override_health_score")
        with tool_errors():
            result = svc.app.override_health(client_id, {"band": band, "score": score, "reason": reason,
                                                         "expires_at": expires_at}, meta.actor, meta)  # fmt: skip
        after_write(svc, result.position)
        return {"client_id": result.external_key, "status": "overridden", "position": result.position,
                "band": band, "score": score, "expires_at": instant(expires_at).isoformat()}  # fmt: skip

    @mcp.tool(annotations=ToolAnnotations(title="Backtest the health model", read_only_hint=True))
    def backtest_health_model(
        ctx: Context,
        days_before: Annotated[int, Field(ge=1, le=365, description="score this many days before each churn")] = 30,
        as_of: datetime | None = None,
    ) -> dict[str, Any]:
        """How well the health score N days before churn separated churned from retained customers:
        AUC (probability that a retained customer scored higher than a churned one; 0.5 = no
        better than chance) and the churn rate per band, replayed from events. Use it to decide
        whether to trust or retune the scorecard."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            report = backtest(svc.store, instant(as_of), days_before)
        note = joined(report.get("note"), future_note(as_of=as_of))
        return {**report, "note": note} if note else report
