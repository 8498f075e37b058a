"""The lifecycle rules (projections/lifecycle.py) as a pure function: each rule, the precedence
between them, the boundaries of each window, override expiry, and periods."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from projections.base import utc_iso
from projections.lifecycle import NOTES, Stage, collapse, stage_as_of, time_in_stage


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def contract(start: str | None = "2025-01-01", renewal: str | None = None, churned: str | None = None,
             registered: str = "2025-01-01T00:00:00") -> dict[str, Any]:  # fmt: skip
    return {"registered_at": utc_iso(t(registered)), "contract_start": start, "renewal_date": renewal, "churned_on": churned}


def override(stage: str, at: str, expires: str, author: str = "mcp:claude", reason: str = "exec sponsor left") -> dict[str, Any]:
    return {"value": stage, "reason": reason, "author": author, "at": utc_iso(t(at)), "expires_at": utc_iso(t(expires))}


@pytest.mark.parametrize(
    ("at", "kwargs", "band", "stage", "because"),
    [
        ("2025-02-01T12:00:00", {}, "green", "onboarding", "within 90 days of contract_start 2025-01-01"),
        # Signed before the contract starts: onboarding, and the reason says the start is ahead.
        ("2024-11-17T09:00:00", {"registered": "2024-11-10T00:00:00"}, None, "onboarding",
         "contract_start 2025-01-01 is in 45 days; onboarding runs until 90 days after it"),
        ("2024-12-31T23:00:00", {"registered": "2024-11-10T00:00:00"}, None, "onboarding",
         "contract_start 2025-01-01 is tomorrow; onboarding runs until 90 days after it"),
        ("2025-03-31T23:59:59", {}, None, "onboarding", "within 90 days of contract_start 2025-01-01"),
        ("2025-04-01T00:00:00", {}, None, "adoption", "first year since contract_start 2025-01-01"),
        ("2025-12-31T23:59:59", {}, "yellow", "adoption", "first year since contract_start 2025-01-01"),
        ("2026-01-01T00:00:00", {}, "green", "mature", "more than a year since contract_start 2025-01-01"),
        # No contract_start: the registration instant anchors onboarding and the first year.
        ("2025-06-01T00:00:00", {"start": None, "registered": "2025-03-15T10:00:00"}, None, "onboarding",
         "within 90 days of registration 2025-03-15"),
        ("2025-06-13T10:00:00", {"start": None, "registered": "2025-03-15T10:00:00"}, None, "adoption",
         "first year since registration 2025-03-15"),
        # Renewal: from 90 days before the renewal date through the day itself, then overdue while
        # no renewal (the date moved forward) or churn is recorded.
        ("2025-08-02T08:00:00", {"renewal": "2025-11-01"}, "green", "adoption", "first year since contract_start 2025-01-01"),
        ("2025-08-02T08:00:00", {"renewal": "2025-10-31"}, "green", "renewal", "renewal_date 2025-10-31 within 90 days"),
        ("2025-10-30T23:00:00", {"renewal": "2025-10-30"}, "yellow", "renewal", "renewal_date 2025-10-30 within 90 days"),
        ("2025-10-31T00:00:00", {"renewal": "2025-10-30"}, "yellow", "renewal",
         "renewal_date 2025-10-30 passed 1 day ago with no renewal or churn recorded"),
        ("2026-03-01T00:00:00", {"renewal": "2025-10-30"}, "green", "renewal",
         "renewal_date 2025-10-30 passed 122 days ago with no renewal or churn recorded"),
        # Renewal beats onboarding; red health beats renewal; a churn beats red health.
        ("2025-02-01T00:00:00", {"renewal": "2025-03-01"}, None, "renewal", "renewal_date 2025-03-01 within 90 days"),
        ("2025-02-01T00:00:00", {"renewal": "2025-03-01"}, "red", "at_risk", "health band red"),
        ("2025-02-01T00:00:00", {"churned": "2025-02-01"}, "red", "churned", "churned on 2025-02-01"),
        ("2025-01-31T23:59:59", {"churned": "2025-02-01"}, "red", "at_risk", "health band red"),
        ("2025-01-31T23:59:59", {"churned": "2025-02-01"}, "unknown", "onboarding", "within 90 days of contract_start 2025-01-01"),
    ],
)
def test_rules_and_precedence(at: str, kwargs: dict[str, Any], band: str | None, stage: str, because: str) -> None:
    result = stage_as_of(t(at), contract(**kwargs), band, None)
    assert (result.stage, result.rule, result.because) == (stage, stage, because)
    assert result.derived == stage and result.override is None
    assert any(note.startswith("expansion:") for note in result.notes)


def test_an_override_wins_only_strictly_between_its_start_and_its_expiry() -> None:
    c = contract(churned="2025-02-01")
    o = override("renewal", "2025-03-01T10:00:00", "2025-03-08T10:00:00")
    assert stage_as_of(t("2025-03-01T10:00:00"), c, None, o).stage == "churned"  # recorded at T: not before it
    during = stage_as_of(t("2025-03-05T00:00:00"), c, None, o)
    assert (during.stage, during.rule, during.because) == ("renewal", "override", "override by mcp:claude: exec sponsor left")
    assert (during.derived, during.derived_because) == ("churned", "churned on 2025-02-01")
    assert during.override == {"stage": "renewal", "reason": "exec sponsor left", "author": "mcp:claude",
                               "set_at": o["at"], "expires_at": o["expires_at"]}  # fmt: skip
    assert stage_as_of(t("2025-03-08T10:00:00"), c, None, o).stage == "churned"  # ends at expires_at
    assert stage_as_of(t("2025-03-08T10:00:00"), c, None, o).override is None


def test_expansion_has_a_hook_and_no_invented_opportunities() -> None:
    c = contract()
    assert stage_as_of(t("2025-06-01T00:00:00"), c, "green", None).stage == "adoption"
    fired = stage_as_of(t("2025-06-01T00:00:00"), c, "green", None, expansion="opportunity 42 (seats +20)")
    assert (fired.stage, fired.because) == ("expansion", "open expansion opportunity: opportunity 42 (seats +20)")
    assert stage_as_of(t("2025-02-01T00:00:00"), c, "green", None, expansion="x").stage == "onboarding"
    done = stage_as_of(t("2025-02-01T00:00:00"), c, "green", None, onboarding_done=date(2025, 1, 20))
    assert done.stage == "adoption"
    assert NOTES and all(isinstance(n, str) for n in NOTES)


def test_first_anniversary_of_a_leap_day() -> None:
    c = contract(start="2024-02-29", registered="2024-02-29T00:00:00")
    assert stage_as_of(t("2025-02-27T23:00:00"), c, None, None).stage == "adoption"
    assert stage_as_of(t("2025-02-28T00:00:00"), c, None, None).stage == "mature"


def test_periods_collapse_consecutive_samples_and_total_time_in_stage() -> None:
    def s(stage: str) -> Stage:
        return Stage(stage, stage, f"because {stage}", stage, f"because {stage}")

    base = t("2025-01-01T00:00:00")
    days = ["onboarding"] * 3 + ["renewal"] * 2 + ["onboarding"]
    samples = [(base + timedelta(days=i), s(stage)) for i, stage in enumerate(days)]
    periods = collapse(samples, base + timedelta(days=6, hours=12))
    assert [(p.stage, p.start.day, p.end.day, p.days, p.ongoing) for p in periods] == [
        ("onboarding", 1, 4, 3.0, False), ("renewal", 4, 6, 2.0, False), ("onboarding", 6, 7, 1.5, True)]  # fmt: skip
    assert periods[1].because == "because renewal"
    assert time_in_stage(periods) == {"onboarding": 4.5, "renewal": 2.0}
