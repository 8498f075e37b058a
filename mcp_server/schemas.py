"""Structured tool results (the output schemas the MCP client sees)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Contact(BaseModel):
    contact_id: str
    name: str | None = Field(description="personal data; '[erased]' after erasure")
    email: str | None = Field(description="personal data; '[erased]' after erasure")
    role: str | None
    primary: bool


class Contract(BaseModel):
    arr: float | None
    seats: int | None
    contract_start: date | None
    renewal_date: date | None
    days_to_renewal: int | None = Field(description="from as_of to renewal_date; null without a renewal date")


class HealthSummary(BaseModel):
    """The health model's answer as of ``as_of`` (calculate_health_score gives each component's inputs)."""

    score: float | None = Field(description="0-100; null when no component has data")
    computed_score: float | None = Field(None, description="the model's score before any override")
    band: Literal["green", "yellow", "red", "unknown"]
    confidence: float = Field(description="share of the scorecard's weight whose components had data")
    components: list[dict[str, Any]] = Field(description="name, score (null: no data), weight, has_data, reason")
    drivers: list[str]
    trend: dict[str, Any] | None = Field(None, description="delta_30d, direction, score_30d_ago")
    override: dict[str, Any] | None = None
    as_of: datetime
    note: str | None = None


class ClientSummary(BaseModel):
    id: str = Field(description="the server's customer id")
    client_id: str = Field(description="the external key (accepted wherever client_id is)")
    name: str
    tier: str | None
    industry: str | None
    owner: str | None
    status: Literal["active", "churned"]
    arr: float | None
    seats: int | None
    renewal_date: date | None


class TimelineEntry(BaseModel):
    position: int = Field(description="position of the event in the log")
    event_id: str
    type: str
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    source: str
    source_id: str
    summary: str
    details: dict[str, Any]


class ClientOverview(BaseModel):
    id: str
    client_id: str
    name: str
    status: Literal["active", "churned"]
    churned_on: date | None
    churn_reason: str | None
    profile: dict[str, Any] = Field(description="domain, industry, tier, owner and the source ids")
    contract: Contract
    contacts: list[Contact]
    health: HealthSummary
    stage: str | None = Field(None, description="lifecycle stage as of as_of (manage_lifecycle_stages explains it)")
    segments: list[str] = Field(default_factory=list, description="names of the segments the customer belongs to now")
    registered_at: datetime
    last_activity_at: datetime = Field(description="when the latest recorded event occurred")
    recent_activity: list[TimelineEntry]
    signals: dict[str, Any] = Field(
        description="usage (30 days), support, NPS and e-mail engagement as of as_of; each says when it has no data"
    )
    as_of: datetime


class RegisterResult(BaseModel):
    id: str
    client_id: str
    status: Literal["created", "existing"]
    position: int | None = Field(description="log position of the write; null when nothing was recorded")
    message: str


class UpdateResult(BaseModel):
    id: str
    client_id: str
    status: Literal["updated", "unchanged"]
    changes: list[dict[str, Any]] = Field(description="each changed field with its old and new value")
    position: int | None


class ClientList(BaseModel):
    items: list[ClientSummary]
    next_cursor: str | None
    notes: list[str] = Field(default_factory=list, description="when nothing matched: each tier, owner or industry "
                             "given that no customer has, with the values the book has")  # fmt: skip


class Timeline(BaseModel):
    client_id: str
    items: list[TimelineEntry]
    next_cursor: str | None
