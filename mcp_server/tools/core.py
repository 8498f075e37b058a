"""The five core tools: register, overview, update, list, timeline."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from events.domain import CONTRACT_FIELDS, PROFILE_FIELDS
from events.errors import CustomerNotFoundError
from mcp_server.schemas import (
    ClientList,
    ClientOverview,
    ClientSummary,
    Contact,
    Contract,
    HealthSummary,
    RegisterResult,
    Timeline,
    TimelineEntry,
    UpdateResult,
)
from mcp_server.services import Services
from mcp_server.tools.common import after_write, command_meta, joined, read_ready, services, tool_errors
from mcp_server.tools.signals import signals_as_of
from projections.health import Health, health_at, trend_of
from projections.segment_members import allowed_customer_ids, segments_of
from projections.segments import unmatched_values
from projections.lifecycle_query import stage_name

ClientId = Annotated[
    str,
    Field(min_length=1, max_length=64, description="external key (e.g. 'acme-corp') or the id returned at registration"),
]
Limit = Annotated[int, Field(ge=1, le=200, description="page size")]
Cursor = Annotated[str | None, Field(max_length=512, description="next_cursor of the previous page")]
UPDATABLE = (*PROFILE_FIELDS, *CONTRACT_FIELDS)


def health_summary(now: Health | None, prior: Health | None, as_of: datetime) -> HealthSummary:
    """The health model's answer for one customer as of ``as_of`` (``prior``: 30 days before, for
    the trend), components without their inputs; ``now`` None: not registered yet at ``as_of``."""
    if now is None:
        return HealthSummary(score=None, band="unknown", confidence=0.0, components=[], drivers=[], as_of=as_of,
                             note=f"not registered yet at {as_of.isoformat()}")  # fmt: skip
    components = [{"name": c.name, "score": c.score, "weight": c.weight, "has_data": c.has_data, "reason": c.reason}
                  for c in now.components]  # fmt: skip
    return HealthSummary(score=now.score, computed_score=now.computed_score, band=now.band,  # type: ignore[arg-type]
                         confidence=now.confidence, components=components, drivers=now.drivers,
                         trend=trend_of(now, prior), override=now.override, as_of=as_of,
                         note=joined(now.note, now.usage_note))  # fmt: skip


def _summary(row: dict[str, Any]) -> ClientSummary:
    return ClientSummary(
        id=row["customer_id"],
        client_id=row["external_key"],
        name=row["name"],
        tier=row["tier"],
        industry=row["industry"],
        owner=row["owner"],
        status=row["status"],
        arr=row["arr"],
        seats=row["seats"],
        renewal_date=row["renewal_date"],
    )


def _entry(row: dict[str, Any]) -> TimelineEntry:
    return TimelineEntry(**{k: row[k] for k in TimelineEntry.model_fields})


def overview(svc: Services, client_id: str, now: datetime | None = None) -> ClientOverview:
    """The 360 view of one customer, from the profile and timeline views."""
    as_of = now or datetime.now(timezone.utc)
    customer_id = svc.app.resolve(client_id)
    row = svc.profiles.get(customer_id)
    if row is None:  # in the log but not in the views: ensure_current ran, so this cannot happen
        raise CustomerNotFoundError(client_id)
    renewal = date.fromisoformat(row["renewal_date"]) if row["renewal_date"] else None
    recent, _ = svc.timeline.for_customer(customer_id, limit=5)
    with svc.store.snapshot() as tx:  # both instants from one consistent read
        scores = health_at(tx, [as_of, as_of - timedelta(days=30)], [customer_id])
    now_health, prior = (s.get(str(customer_id)) for s in scores)
    return ClientOverview(
        id=row["customer_id"],
        client_id=row["external_key"],
        name=row["name"],
        status=row["status"],
        churned_on=row["churned_on"],
        churn_reason=row["churn_reason"],
        profile={k: row[k] for k in PROFILE_FIELDS if k != "name"},
        contract=Contract(
            arr=row["arr"],
            seats=row["seats"],
            contract_start=row["contract_start"],
            renewal_date=renewal,
            days_to_renewal=(renewal - as_of.date()).days if renewal else None,
        ),
        contacts=[Contact(**c) for c in row["contacts"]],
        health=health_summary(now_health, prior, as_of),
        stage=stage_name(svc.store, customer_id, as_of, now_health.band if now_health else None),
        segments=segments_of(svc.store, customer_id, as_of),
        registered_at=row["registered_at"],
        last_activity_at=row["updated_at"],
        recent_activity=[_entry(r) for r in recent],
        signals=signals_as_of(svc.store, customer_id, row["seats"], as_of),
        as_of=as_of,
    )


def register(mcp: MCPServer) -> None:
    @mcp.tool(
        annotations=ToolAnnotations(
            title="Register a customer", read_only_hint=False, destructive_hint=False, idempotent_hint=True
        )
    )
    def register_client(
        ctx: Context,
        client_name: Annotated[str, Field(min_length=1, max_length=200, description="the account's name")],
        client_id: Annotated[
            str | None,
            Field(max_length=64, description="external key (lowercase slug); derived from the name when omitted"),
        ] = None,
        domain: Annotated[str | None, Field(max_length=253, description="e.g. acme.com")] = None,
        industry: Annotated[str | None, Field(max_length=200)] = None,
        tier: Annotated[str | None, Field(max_length=40, description="e.g. enterprise, growth, starter")] = None,
        arr: Annotated[float | None, Field(description="annual recurring revenue, >= 0")] = None,
        seats: Annotated[int | None, Field(description="licensed seats, >= 0")] = None,
        contract_start: date | None = None,
        renewal_date: date | None = None,
        owner: Annotated[str | None, Field(max_length=200, description="owning CSM")] = None,
        contact_name: Annotated[str | None, Field(max_length=200, description="primary contact (personal data)")] = None,
        contact_email: Annotated[str | None, Field(max_length=320, description="primary contact (personal data)")] = None,
        zendesk_org_id: Annotated[str | None, Field(max_length=100)] = None,
        intercom_company_id: Annotated[str | None, Field(max_length=100)] = None,
        mixpanel_account_id: Annotated[str | None, Field(max_length=100)] = None,
    ) -> RegisterResult:
        """Create a customer account. Idempotent on client_id (the external key): registering
        a key that exists changes nothing and reports status 'existing'. Use it when a new
        account signs; use update_client_info to change an existing one."""
        svc = services(ctx)
        data = {
            "external_key": client_id, "name": client_name, "domain": domain, "industry": industry,
            "tier": tier, "arr": arr, "seats": seats, "contract_start": contract_start,
            "renewal_date": renewal_date, "owner": owner, "contact_name": contact_name,
            "contact_email": contact_email, "zendesk_org_id": zendesk_org_id,
            "intercom_company_id": intercom_company_id, "mixpanel_account_id": mixpanel_account_id,
        }  # fmt: skip
        with tool_errors():
            result = svc.app.register_customer(data, command_meta(ctx, "register_client"))
        after_write(svc, result.position)
        message = (
            f"registered {result.external_key}"
            if result.status == "created"
            else f"{result.external_key} already exists; nothing recorded (use update_client_info to change it)"
        )
        return RegisterResult(
            id=str(result.customer_id),
            client_id=result.external_key,
            status="created" if result.status == "created" else "existing",
            position=result.position,
            message=message,
        )

    @mcp.tool(annotations=ToolAnnotations(title="Customer 360 overview", read_only_hint=True))
    def get_client_overview(ctx: Context, client_id: ClientId) -> ClientOverview:
        """The 360 view of one customer: profile, contract and days to renewal, contacts, health
        now (score, band, confidence, components, top drivers, 30-day trend, any override; null
        with a note when no component has data), lifecycle stage, segments, support/NPS/e-mail
        signals and the latest activity. Start here when asked about a specific customer."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            return overview(svc, client_id)

    @mcp.tool(
        annotations=ToolAnnotations(
            title="Update a customer", read_only_hint=False, destructive_hint=False, idempotent_hint=True
        )
    )
    def update_client_info(
        ctx: Context,
        client_id: ClientId,
        changes: Annotated[
            dict[str, Any],
            Field(description=f"fields to change, any of: {', '.join(UPDATABLE)}; null clears an optional field"),
        ],
    ) -> UpdateResult:
        """Change profile or contract fields of a customer. Each change is recorded as an event
        with its old and new value; unknown fields are rejected and nothing is recorded.
        Fields already holding the given value are left alone (status 'unchanged')."""
        svc = services(ctx)
        with tool_errors():
            result = svc.app.update_customer(client_id, changes, command_meta(ctx, "update_client_info"))
        after_write(svc, result.position)
        return UpdateResult(
            id=str(result.customer_id),
            client_id=result.external_key,
            status="updated" if result.status == "updated" else "unchanged",
            changes=result.changes,
            position=result.position,
        )

    @mcp.tool(annotations=ToolAnnotations(title="List customers", read_only_hint=True))
    def list_clients(
        ctx: Context,
        tier: Annotated[str | None, Field(max_length=40)] = None,
        owner: Annotated[str | None, Field(max_length=200)] = None,
        industry: Annotated[str | None, Field(max_length=200)] = None,
        status: Literal["active", "churned"] | None = None,
        min_arr: Annotated[float | None, Field(ge=0)] = None,
        max_arr: Annotated[float | None, Field(ge=0)] = None,
        renewal_within_days: Annotated[int | None, Field(ge=0, le=3650)] = None,
        segment: Annotated[str | None, Field(max_length=80, description="only members of this segment (segment_customers)")] = None,
        band: Literal["green", "yellow", "red", "unknown"] | None = None,
        min_health: Annotated[float | None, Field(ge=0, le=100, description="health score now >= this (unscored excluded)")] = None,
        max_health: Annotated[float | None, Field(ge=0, le=100, description="health score now <= this (unscored excluded)")] = None,
        sort: Literal["name", "arr", "renewal_date"] = "name",
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ClientList:
        """List customers filtered by tier, owner, industry, status, ARR range, renewal
        window (days from today), segment membership, health band or health score range,
        sorted by name, ARR (largest first) or renewal date (soonest first). Paginated: pass
        next_cursor back as cursor."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            # Segment and health filters: the allowed ids now (one pass over the book), then the
            # same keyset-paginated query as the other filters.
            allowed = allowed_customer_ids(svc.store, datetime.now(timezone.utc), segment=segment, band=band,
                                           min_health=min_health, max_health=max_health)  # fmt: skip
            rows, next_cursor = svc.profiles.list(
                tier=tier, owner=owner, industry=industry, status=status, min_arr=min_arr, max_arr=max_arr,
                renewal_within_days=renewal_within_days, customer_ids=allowed, sort=sort, limit=limit, cursor=cursor,
            )  # fmt: skip
            notes = []
            given = [{"field": f, "op": "=", "value": v} for f, v in (("tier", tier), ("owner", owner), ("industry", industry)) if v]
            if not rows and cursor is None and given:  # an owner's first name, a misspelt industry: say so
                notes = unmatched_values({"all": given}, svc.profiles.text_fields())
        return ClientList(items=[_summary(r) for r in rows], next_cursor=next_cursor, notes=notes)

    @mcp.tool(annotations=ToolAnnotations(title="Customer timeline", read_only_hint=True))
    def get_client_timeline(
        ctx: Context,
        client_id: ClientId,
        types: Annotated[
            list[Annotated[str, Field(max_length=80)]] | None,
            Field(max_length=20, description="event types or prefixes, e.g. ['customer.contract_changed']"),
        ] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Timeline:
        """Everything that happened to a customer, newest first, from the event log: who did
        it, where it came from and when it occurred. Filter by type prefix and time range."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            customer_id = svc.app.resolve(client_id)
            rows, next_cursor = svc.timeline.for_customer(
                customer_id, types=types, since=since, until=until, limit=limit, cursor=cursor
            )
        return Timeline(client_id=client_id, items=[_entry(r) for r in rows], next_cursor=next_cursor)
