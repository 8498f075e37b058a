"""Governance tools: replay a customer as of an instant, verify the event log's hash chain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from events.replay import as_utc, customer_state_as_of
from mcp_server.schemas import Contact
from mcp_server.services import Services
from mcp_server.tools.common import future_note, read_ready, services, tool_errors
from projections.audit import VerifyReport, catch_up_chain, verify_chain
from projections.health import Health, health_at
from projections.lifecycle_query import stage_name

KNOWN_AT_HEALTH = (
    "health and stage as known at a past instant are not given: the health model reads every event recorded so far "
    "by when it occurred, so it cannot leave out those recorded after known_at; omit known_at for them as of as_of"
)

ClientId = Annotated[
    str,
    Field(
        min_length=1, max_length=64, description="external key (e.g. 'acme-corp') or the id returned at registration"
    ),
]


class ReplayedEvent(BaseModel):
    position: int = Field(description="position of the event in the log")
    type: str
    occurred_at: datetime
    recorded_at: datetime


class ReplayedHealth(BaseModel):
    score: float | None
    band: Literal["green", "yellow", "red", "unknown"]
    confidence: float | None = Field(None, description="share of the scorecard's weight whose components had data")
    drivers: list[str] = Field(default_factory=list)
    note: str | None = None


class CustomerState(BaseModel):
    id: str
    client_id: str = Field(description="the external key")
    status: Literal["active", "churned"]
    churned_on: str | None
    churn_reason: str | None
    profile: dict[str, Any] = Field(description="profile and contract fields as they were")
    contacts: list[Contact]
    health: ReplayedHealth
    stage: str | None = Field(None, description="lifecycle stage as of as_of (null with known_at: see health.note)")
    registered_at: datetime
    last_position: int = Field(description="position of the last event folded into this state")
    events: list[ReplayedEvent] = Field(description="the events applied, in order")


class StateAsOf(BaseModel):
    client_id: str
    as_of: datetime
    known_at: datetime | None
    existed: bool = Field(description="false when the customer did not exist yet at as_of (state is null)")
    state: CustomerState | None
    message: str


class AuditTrailReport(BaseModel):
    ok: bool = Field(description="true when every linked event still matches its link")
    checked: int = Field(description="events whose link was recomputed and matched")
    first_broken: int | None = Field(description="position of the first event that breaks the chain")
    reason: str | None
    head: int = Field(description="last position in the event log")
    linked: int = Field(description="last position linked by the chain")
    unverified: int = Field(description="events after the last link, not linked yet (not a failure)")
    message: str


def state_as_of(svc: Services, client_id: str, as_of: datetime, known_at: datetime | None) -> StateAsOf:
    """The replayed state as a tool result (raises CustomerNotFoundError / InvalidInputError)."""
    when, known = as_utc(as_of), (as_utc(known_at) if known_at is not None else None)
    state = customer_state_as_of(svc.app, client_id, when, known)
    if state is None:
        suffix = f" (as known at {known.isoformat()})" if known else ""
        return StateAsOf(
            client_id=client_id, as_of=when, known_at=known, existed=False, state=None,
            message=f"{client_id} did not exist yet at {when.isoformat()}{suffix}",
        )  # fmt: skip
    customer_id = UUID(state["id"])
    health = _model_health(svc, customer_id, when) if known is None else None
    replayed = CustomerState(
        id=state["id"],
        client_id=state["external_key"],
        status=state["status"],
        churned_on=state["churned_on"],
        churn_reason=state["churn_reason"],
        profile=state["profile"],
        contacts=[Contact(**c) for c in state["contacts"]],
        health=_replayed(health, known),
        stage=stage_name(svc.store, customer_id, when, health.band if health else None) if known is None else None,
        registered_at=state["registered_at"],
        last_position=state["last_position"],
        events=[ReplayedEvent(**e) for e in state["events"]],
    )
    ahead = future_note(as_of=as_of, known_at=known_at)
    return StateAsOf(
        client_id=client_id, as_of=when, known_at=known, existed=True, state=replayed,
        message=f"{len(replayed.events)} event(s) replayed up to position {replayed.last_position}"
        + (f"; {ahead}" if ahead else ""),
    )  # fmt: skip


def _model_health(svc: Services, customer_id: UUID, when: datetime) -> Health | None:
    """The health model's answer as of ``when``, from the views (which hold every event recorded so
    far by when it occurred); None when the views do not know the customer."""
    read_ready(svc)
    with svc.store.snapshot() as tx:
        (scores,) = health_at(tx, [when], [customer_id])
    return scores.get(str(customer_id))


def _replayed(health: Health | None, known: datetime | None) -> ReplayedHealth:
    """``health`` as the replay shows it. With ``known_at`` there is none: the views cannot leave out
    what was recorded after it, so a score would mix in later knowledge."""
    if known is not None:
        return ReplayedHealth(score=None, band="unknown", note=KNOWN_AT_HEALTH)
    if health is None:  # the log says it existed; the views agree once current (read_ready)
        return ReplayedHealth(score=None, band="unknown", note="no health for this customer in the views yet")
    return ReplayedHealth(score=health.score, band=health.band, confidence=health.confidence,  # type: ignore[arg-type]
                          drivers=health.drivers, note=health.note)  # fmt: skip


def audit_report(svc: Services) -> AuditTrailReport:
    """Link what is new (when this process runs the chain), then verify the whole chain."""
    not_linked = catch_up_chain(svc.engine)
    report: VerifyReport = verify_chain(svc.store, svc.app.recorder)
    message = report.summary() + (f" (new events could not be linked: {not_linked})" if not_linked else "")
    return AuditTrailReport(**report.as_dict(), message=message)


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="Customer state as of an instant", read_only_hint=True))
    def get_customer_state_as_of(
        ctx: Context,
        client_id: ClientId,
        as_of: Annotated[datetime, Field(description="ISO 8601 instant; without a time zone it is UTC")],
        known_at: Annotated[
            datetime | None,
            Field(description="also leave out events recorded after this instant (what we knew then); ISO 8601"),
        ] = None,
    ) -> StateAsOf:
        """The customer's profile, contract, contacts and status exactly as they were at a
        past instant, replayed from the event log (events that occurred at or before as_of;
        with known_at, only those already recorded then), with its health (score, band,
        confidence, drivers) and lifecycle stage as of that instant from the health model. With
        known_at, health and stage are null with a note (the model cannot leave out events
        recorded later). existed is false before the registration."""
        svc = services(ctx)
        with tool_errors():
            return state_as_of(svc, client_id, as_of, known_at)

    @mcp.tool(annotations=ToolAnnotations(title="Verify the audit trail", read_only_hint=True))
    def verify_audit_trail(ctx: Context) -> AuditTrailReport:
        """Check the event log's hash chain: recompute each link from the stored events and
        report how many were checked, the first broken position and why (an event changed,
        deleted or inserted after it was linked), the head of the log, and how many recent
        events are not linked yet (unverified, not a failure)."""
        svc = services(ctx)
        with tool_errors():  # a stopped chain projection is reported as "views unavailable"
            return audit_report(svc)
