"""Lifecycle stages (DESIGN §6): onboarding, adoption, mature, renewal, expansion, at_risk,
churned — derived from events, with overrides. See docs/lifecycle.md.

:func:`stage_as_of` is a pure function of what was known about a customer at an instant T:
its contract state (registered_at, contract_start, renewal_date, churned_on), its health
band at T and the latest stage override recorded before T. The first rule that holds wins:

1. **override**  — a stage override recorded before T and expiring after it (at < T < expires_at)
2. **churned**   — churned_on <= T's date
3. **at_risk**   — the health band at T is red
4. **renewal**   — renewal_date is within 90 days after T (0 <= days <= 90), or passed with no
   renewal or churn recorded: an overdue renewal is still a renewal to close (the financial
   component says the same), and leaving it for "mature" hid it
5. **onboarding** — T is within 90 days of contract_start (else of registration); it would
   end earlier when the onboarding plan completes (hook: :func:`onboarding_plan_completed_on`)
6. **expansion** — an open expansion opportunity (hook: :func:`open_expansion_opportunity`)
7. **adoption**  — T is in the first year since contract_start (else registration)
8. **mature**    — otherwise

Dates are UTC: a stage that depends on a date changes at midnight UTC. The rules read only
rows stamped before T, so the stage as of T is a function of the events that occurred
before T, like the health score it uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from projections.base import as_utc, counted, utc_iso

ONBOARDING_DAYS = 90
RENEWAL_WINDOW_DAYS = 90
RULES = ("override", "churned", "at_risk", "renewal", "onboarding", "expansion", "adoption", "mature")
# The order customers are listed in: the journey, then the exits.
STAGE_ORDER = ("onboarding", "adoption", "expansion", "mature", "renewal", "at_risk", "churned")

NOTES = (
    (
        "expansion: no opportunities are recorded yet (there is no Opportunity aggregate), so the "
        "expansion rule is in place but never fires; only an override can put a customer in expansion"
    ),
    (
        "onboarding: no onboarding plans are recorded yet, so onboarding lasts the full 90 days "
        "instead of ending when the plan completes"
    ),
)


# ------------------------------------------------------------------------------ hooks
def open_expansion_opportunity(customer_id: str, at: datetime) -> str | None:
    """HOOK for the expansion rule: a description of an expansion opportunity of the customer
    open at ``at``, else None. There is no Opportunity aggregate yet, so this always answers
    None (stated in every result's notes); wire it to the opportunities view when it exists."""
    return None


def onboarding_plan_completed_on(customer_id: str, at: datetime) -> date | None:
    """HOOK for the onboarding rule: the day the customer's onboarding plan completed, if it
    did before ``at``. There is no OnboardingPlan aggregate yet, so this always answers None."""
    return None


# ------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Stage:
    """The stage at an instant and why. ``derived`` is what the rules give without the override."""

    stage: str
    rule: str
    because: str
    derived: str
    derived_because: str
    override: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=NOTES)


def anchor_of(contract: Mapping[str, Any]) -> tuple[datetime, str]:
    """The instant the customer's life starts: contract_start (midnight UTC), else registration."""
    if contract.get("contract_start"):
        start = contract["contract_start"][:10]
        return datetime.combine(date.fromisoformat(start), time(), UTC), f"contract_start {start}"
    registered = parse_utc(contract["registered_at"])
    return registered, f"registration {registered.date().isoformat()}"


def active_override(override: Mapping[str, Any] | None, at: datetime) -> dict[str, Any] | None:
    """The override in force at ``at``: recorded before it and expiring after it."""
    t = utc_iso(at)
    if override is not None and override["at"] < t < override["expires_at"]:
        return {"stage": override["value"], "reason": override["reason"], "author": override["author"],
                "set_at": override["at"], "expires_at": override["expires_at"]}  # fmt: skip
    return None


def band_matters(at: datetime, contract: Mapping[str, Any], override: Mapping[str, Any] | None) -> bool:
    """False when a rule above at_risk decides the stage (an active override, a churn), so a
    caller can skip computing the health band."""
    at = as_utc(at)
    churned = contract.get("churned_on")
    return active_override(override, at) is None and not (churned and churned[:10] <= at.date().isoformat())


def derive(at: datetime, contract: Mapping[str, Any], band: str | None, *, expansion: str | None = None,
           onboarding_done: date | None = None) -> tuple[str, str]:  # fmt: skip
    """(stage, because) by the rules 2-8, without overrides."""
    at = as_utc(at)
    today = at.date()
    churned = contract.get("churned_on")
    if churned and churned[:10] <= today.isoformat():
        return "churned", f"churned on {churned[:10]}"
    if band == "red":
        return "at_risk", "health band red"
    renewal = contract.get("renewal_date")
    if renewal:
        days = (date.fromisoformat(renewal[:10]) - today).days
        if 0 <= days <= RENEWAL_WINDOW_DAYS:
            return "renewal", f"renewal_date {renewal[:10]} within {RENEWAL_WINDOW_DAYS} days"
        if days < 0:  # a renewal recorded moves the date forward, a churn is caught above
            return "renewal", f"renewal_date {renewal[:10]} passed {counted(-days, 'day')} ago with no renewal or churn recorded"
    anchor, what = anchor_of(contract)
    if at < anchor + timedelta(days=ONBOARDING_DAYS) and (onboarding_done is None or today < onboarding_done):
        if at < anchor:  # signed, not started yet: onboarding is ahead of it
            ahead = (anchor.date() - today).days
            return "onboarding", f"{what} is {'tomorrow' if ahead == 1 else f'in {ahead} days'}; onboarding runs until {ONBOARDING_DAYS} days after it"
        return "onboarding", f"within {ONBOARDING_DAYS} days of {what}"
    if expansion:
        return "expansion", f"open expansion opportunity: {expansion}"
    if at < first_anniversary(anchor):
        return "adoption", f"first year since {what}"
    return "mature", f"more than a year since {what}"


def stage_as_of(at: datetime, contract: Mapping[str, Any], band: str | None, override: Mapping[str, Any] | None,
                *, expansion: str | None = None, onboarding_done: date | None = None) -> Stage:  # fmt: skip
    """The stage of a customer at ``at``.

    ``contract``: its latest contract-history row recorded before ``at`` (registered_at,
    contract_start, renewal_date, churned_on); ``band``: its health band at ``at`` (None when
    not computed, e.g. because :func:`band_matters` said so); ``override``: its latest stage
    override row recorded before ``at`` (value, reason, author, at, expires_at), active or not;
    ``expansion`` / ``onboarding_done``: what the hooks answered.
    """
    at = as_utc(at)
    derived, derived_because = derive(at, contract, band, expansion=expansion, onboarding_done=onboarding_done)
    active = active_override(override, at)
    if active is not None:
        because = f"override by {active['author']}: {active['reason']}"
        return Stage(active["stage"], "override", because, derived, derived_because, active)
    return Stage(derived, derived, derived_because, derived, derived_because)


# ---------------------------------------------------------------------------- periods
@dataclass(frozen=True)
class Period:
    """A stretch of time in one stage; ``because`` is what moved the customer into it."""

    stage: str
    rule: str
    start: datetime
    end: datetime
    because: str
    ongoing: bool

    @property
    def days(self) -> float:
        return round((self.end - self.start).total_seconds() / 86400, 2)


def collapse(samples: list[tuple[datetime, Stage]], until: datetime) -> list[Period]:
    """Consecutive samples in the same stage become one period (oldest first); the last one
    runs to ``until`` and is ongoing."""
    periods: list[Period] = []
    for at, stage in samples:
        if periods and periods[-1].stage == stage.stage:
            continue
        if periods:
            last = periods[-1]
            periods[-1] = Period(last.stage, last.rule, last.start, at, last.because, False)
        periods.append(Period(stage.stage, stage.rule, at, until, stage.because, True))
    return periods


def time_in_stage(periods: list[Period]) -> dict[str, float]:
    """Total days spent in each stage over the periods."""
    totals: dict[str, float] = {}
    for p in periods:
        totals[p.stage] = round(totals.get(p.stage, 0.0) + p.days, 2)
    return totals


# ---------------------------------------------------------------------------- helpers
def parse_utc(text: str) -> datetime:
    return as_utc(datetime.fromisoformat(text))


def first_anniversary(moment: datetime) -> datetime:
    """One calendar year later (29 February -> 28 February)."""
    try:
        return moment.replace(year=moment.year + 1)
    except ValueError:
        return moment.replace(year=moment.year + 1, day=28)
