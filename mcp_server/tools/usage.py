"""Usage tools: track_usage_engagement, track_feature_adoption, analyze_engagement_patterns.
All read the usage views through projections/usage_reports.py, as of any instant."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.tools.common import future_note, instant, joined, read_ready, services, tool_errors
from projections.health_inputs_query import DEFAULT_KEY_FEATURES
from projections.usage_reports import (
    engagement,
    engagement_patterns,
    feature_adoption,
)

ClientId = Annotated[str, Field(min_length=1, max_length=64, description="external key (e.g. 'acme-corp') or customer id")]
Days = Annotated[int, Field(ge=1, le=365, description="length of the period in days, ending at as_of's date (exclusive)")]
AsOf = Annotated[
    datetime | None,
    Field(description="answer as of this instant (no zone = UTC; default now): only whole UTC days before its date count"),
]
Ratio = Annotated[float | None, Field(description="(this - previous) / previous as a fraction (-0.6 = down 60%); null when previous is 0")]


class Window(BaseModel):
    start: date = Field(description="first day counted (UTC)")
    end: date = Field(description="first day not counted (exclusive)")
    days: int


class Customer(BaseModel):
    client_id: str = Field(description="the customer's external key")
    name: str


# ----------------------------------------------------------------------- engagement
class UsageBucket(BaseModel):
    label: str = Field(description="the day (2026-01-31), ISO week (2026-W05) or month (2026-01)")
    start: date
    end: date = Field(description="exclusive")
    days: int = Field(description="days of this bucket inside the period")
    partial: bool = Field(description="the calendar week or month extends beyond the period")
    active_users: int = Field(description="distinct users active in the bucket (0 = no usage, not missing data)")
    events: int
    sessions: int
    active_days: int = Field(description="days with any usage")
    active_users_per_seat: float | None = Field(description="active_users / seats; null when seats are unknown")


class UsageTrend(BaseModel):
    previous_period: Window
    active_users: int
    active_users_previous: int
    active_users_delta: int
    active_users_relative_change: Ratio
    events: int
    events_previous: int
    events_delta: int
    events_relative_change: Ratio
    sessions: int
    sessions_previous: int
    direction: Literal["up", "down", "flat"] = Field(description="of distinct active users")
    method: str


class UsageEngagement(BaseModel):
    client_id: str
    name: str
    as_of: datetime
    granularity: Literal["day", "week", "month"]
    period: Window
    seats: int | None = Field(description="licensed seats in the contract in force at as_of; null when unknown")
    active_users: int | None = Field(None, description="distinct users over the whole period; null = no usage data at all")
    active_users_per_seat: float | None = Field(None, description="active_users / seats")
    avg_daily_active_users: float | None = Field(None, description="sum of daily active users / days in the period")
    events: int | None = None
    sessions: int | None = Field(None, description="session-start events (e.g. $session_start, App Open)")
    active_days: int | None = Field(None, description="days in the period with any usage")
    first_usage_day: date | None = Field(None, description="first day with usage before as_of")
    last_usage_day: date | None = Field(None, description="last day with usage before as_of")
    buckets: list[UsageBucket] = Field(description="every bucket of the period, oldest first, zeros included")
    trend: UsageTrend | None = Field(description="this period vs the previous one; null without any usage data")
    note: str | None = None


# ------------------------------------------------------------------------- adoption
class Adopter(Customer):
    first_use: date = Field(description="first day this customer used the feature")
    last_use: date
    uses_in_window: int


class AdoptionPoint(BaseModel):
    month: str = Field(description="2026-01")
    through: date = Field(description="counted up to and including this day (month end, or the day before as_of)")
    customers: int = Field(description="customers that had used the feature at least once by then")


class FeatureSummary(BaseModel):
    feature: str
    key: bool = Field(description="one of the key features")
    adopting_customers: int = Field(description="customers that used it in the window")
    share_of_active_customers: float | None = Field(description="adopting_customers / customers with any usage in the window")
    uses_in_window: int
    customers_ever: int = Field(description="customers that used it at least once before as_of")
    first_use: date | None = Field(description="first use by any customer")
    adopters: list[Adopter] = Field(description="the adopting customers with their first-use dates, earliest first (up to limit)")
    adopters_truncated: int = Field(description="adopters left out by limit")
    adoption_over_time: list[AdoptionPoint] = Field(description="cumulative adopters at each month end (last 12 months)")


class CustomerFeature(BaseModel):
    feature: str
    key: bool
    first_use: date
    last_use: date
    uses_in_window: int
    used_in_window: bool


class NotAdopted(BaseModel):
    feature: str
    ever_used: bool = Field(description="used before the window but not in it (lapsed) vs never used")
    first_use: date | None
    last_use: date | None


class CustomerAdoption(Customer):
    features_used_in_window: int | None = None
    key_features_used_in_window: int | None = None
    key_features_total: int | None = None
    breadth: float | None = Field(None, description="key features used in the window / key features")
    breadth_text: str | None = None
    features: list[CustomerFeature] = Field(description="every feature it has used, by first use")
    not_adopted: list[NotAdopted] = Field(description="key features it did not use in the window")


class FeatureAdoption(BaseModel):
    as_of: datetime
    window: Window
    key_features: list[str]
    key_features_source: Literal["scorecard", DEFAULT_KEY_FEATURES]  # type: ignore[valid-type]
    scorecard_at: str | None = Field(description="when the scorecard in force was configured; null = the default")
    customer: CustomerAdoption | None = Field(None, description="the one customer asked for (client_id given)")
    features: list[FeatureSummary] = Field(default_factory=list, description="per feature across the book (no client_id)")
    active_customers: int | None = Field(None, description="customers with any usage in the window (book view)")
    customers: int | None = Field(None, description="customers registered before as_of (book view)")
    note: str | None = None


# ------------------------------------------------------------------------- patterns
class UsageChange(Customer):
    window: Window
    previous_window: Window
    active_users: int
    active_users_previous: int
    active_users_relative_change: Ratio
    events: int
    events_previous: int
    events_relative_change: Ratio
    sessions: int
    sessions_previous: int
    reasons: list[str]


class DormantAccount(Customer):
    window: Window
    last_usage_day: date
    days_since_last_usage: int = Field(description="days from the last usage day to as_of's date")
    active_users_previous: int
    events_previous: int


class DormantUsers(Customer):
    window: Window
    previous_window: Window
    dormant_users: int = Field(description="users active in the previous window and not in this one")
    active_users_previous: int
    share_of_previous: float


class WeekPoint(BaseModel):
    start: date
    end: date
    active_users: int


class Declining(Customer):
    weeks: list[WeekPoint]
    slope_per_week: float = Field(description="least-squares slope of weekly active users (users per week)")
    mean_weekly_active_users: float
    relative_slope: float = Field(description="slope / mean: the share of the average lost per week")
    fitted_first_week: float
    fitted_last_week: float


class EngagementPatterns(BaseModel):
    as_of: datetime
    window: Window
    previous_window: Window
    threshold: float
    weeks: int
    customers_considered: int = Field(description="registered before as_of and not churned")
    customers_with_usage_in_window: int
    drops: list[UsageChange] = Field(description="active users or events down by more than threshold, worst first")
    spikes: list[UsageChange] = Field(description="active users or events up by more than threshold, largest first")
    dormant_accounts: list[DormantAccount] = Field(description="no usage in the window, usage before it")
    dormant_users: list[DormantUsers] = Field(description="customers whose users went quiet, most first")
    declining: list[Declining] = Field(description="negative slope of weekly active users, steepest first")
    counts: dict[str, int] = Field(description="entries per list before limit")
    method: dict[str, str]
    note: str | None = None


LISTS = ("drops", "spikes", "dormant_accounts", "dormant_users", "declining")


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="Usage engagement", read_only_hint=True))
    def track_usage_engagement(
        ctx: Context,
        client_id: ClientId,
        days: Days = 30,
        granularity: Literal["day", "week", "month"] = "week",
        as_of: AsOf = None,
    ) -> UsageEngagement:
        """A customer's product usage over a period: distinct active users against licensed
        seats, sessions and events, per day, ISO week or calendar month (buckets without usage
        shown as zeros), and the trend against the previous period of the same length. Says so
        when no usage was ever recorded for the customer instead of returning zeros."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            cid = svc.app.resolve(client_id)
            with svc.store.snapshot() as tx:
                report = engagement(tx, str(cid), instant(as_of), days, granularity)
        report["note"] = joined(report.get("note"), future_note(as_of=as_of))
        return UsageEngagement.model_validate(report)

    @mcp.tool(annotations=ToolAnnotations(title="Feature adoption", read_only_hint=True))
    def track_feature_adoption(
        ctx: Context,
        client_id: Annotated[str | None, Field(max_length=64, description="one customer; omit for the whole book")] = None,
        feature: Annotated[str | None, Field(min_length=1, max_length=200, description="only this feature (event name)")] = None,
        days: Days = 30,
        as_of: AsOf = None,
        limit: Annotated[int, Field(ge=1, le=500, description="adopters listed per feature")] = 50,
    ) -> FeatureAdoption:
        """Feature adoption from usage events. Without client_id, per feature: customers that used
        it in the window, their share of active customers, first-use dates and cumulative adoption
        per month. With client_id: breadth (key features used / key features), first use of each
        feature and the key features it has not adopted. Key features are the scorecard's, else
        every feature some customer used in the 90 days before as_of (one nobody used for that long
        is retired or renamed) except Mixpanel's own events (names starting with $, such as
        automatic page views: activity, listed here with key false, but not a feature to adopt);
        key_features_source says which."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            cid = str(svc.app.resolve(client_id)) if client_id else None
            with svc.store.snapshot() as tx:
                report = feature_adoption(tx, instant(as_of), days, feature, cid, limit)
        report["note"] = joined(report.get("note"), future_note(as_of=as_of))
        return FeatureAdoption.model_validate(report)

    @mcp.tool(annotations=ToolAnnotations(title="Engagement patterns", read_only_hint=True))
    def analyze_engagement_patterns(
        ctx: Context,
        days: Days = 30,
        threshold: Annotated[float, Field(gt=0, le=10, description="relative change that matters: 0.3 = 30%")] = 0.3,
        weeks: Annotated[int, Field(ge=3, le=52, description="weeks of weekly active users for the decline slope")] = 8,
        as_of: AsOf = None,
        limit: Annotated[int, Field(ge=1, le=200, description="entries per list")] = 20,
    ) -> EngagementPatterns:
        """Usage changes that matter across the book, each naming the customer, its numbers and
        the window: drops and spikes (active users or events beyond the threshold vs the previous
        window), dormant accounts (no usage in the window, usage before), dormant users (active in
        the previous window, not in this one) and declining accounts (negative least-squares
        slope of weekly active users). Churned customers are left out."""
        svc = services(ctx)
        with tool_errors():
            read_ready(svc)
            with svc.store.snapshot() as tx:
                report = engagement_patterns(tx, instant(as_of), days, threshold, weeks)
        report["note"] = joined(report.get("note"), future_note(as_of=as_of))
        report["counts"] = {k: len(report[k]) for k in LISTS}
        for k in LISTS:
            report[k] = report[k][:limit]
        return EngagementPatterns.model_validate(report)
