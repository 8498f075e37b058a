"""The components' reasons read as sentences: a count of one is singular, a renewal on the day is "today";
and a backtest on few churns says what its AUC is worth."""

from __future__ import annotations

from datetime import UTC, datetime

from projections.backtest import MIN_CHURNS, sample_note
from projections.base import counted
from events.scorecard import ScorecardConfig
from projections.health import (ANSWER_STALE_AFTER_DAYS, IDLE_SAID_AFTER_DAYS, adoption_component, engagement_component,
                                financial_component, score_customer, sentiment_component, support_component,
                                usage_component, usage_note)
from projections.health_inputs_query import BookInputs, Inputs, usage_window_end

AS_OF = datetime(2026, 12, 1, 12, tzinfo=UTC)


def book(through: str | None = "2026-11-30") -> BookInputs:
    """A book as of AS_OF whose last usage day (any account) is ``through``."""
    return BookInputs(AS_OF, ScorecardConfig(), None, set(), False, {}, usage_through=through,
                      usage_end=usage_window_end(AS_OF.date(), through))  # fmt: skip


def test_counted_is_singular_for_one_only() -> None:
    assert [counted(n, "day") for n in (0, 1, 2)] == ["0 days", "1 day", "2 days"]


def test_one_ticket_one_rating_one_email_one_day() -> None:
    one = Inputs("c", {"arr": 1000.0, "renewal_date": "2026-12-02"},
                 tickets=[{"solved": False, "priority": "normal"}], csat_90d=[1.0],
                 email_kinds={"delivered": (1, "2026-11-20"), "open": (1, "2026-11-30")})  # fmt: skip
    assert support_component(one, 15, True).reason == "1 open ticket (0 high priority), CSAT 100% over 1 rating in 90 days"
    assert engagement_component(one, 10, AS_OF).reason == "last e-mail open 1 day ago"
    assert financial_component(one, 10, AS_OF).reason == "renews in 1 day with no renewal signal"
    unopened = Inputs("c", {"renewal_date": "2026-11-30"}, email_kinds={"delivered": (1, "2026-11-20")}, emails_sent=1)
    assert engagement_component(unopened, 10, AS_OF).reason == "no open, click or reply on record (1 e-mail sent)"
    assert financial_component(unopened, 10, AS_OF).reason == "renewal date passed 1 day ago with no renewal recorded"


def test_many_are_plural_and_the_day_itself_is_today() -> None:
    many = Inputs("c", {"renewal_date": "2026-12-01"},
                  tickets=[{"solved": False, "priority": "urgent"}, {"solved": False, "priority": "low"}],
                  csat_90d=[0.5, 1.0])  # fmt: skip
    assert support_component(many, 15, True).reason == "2 open tickets (1 high priority), CSAT 75% over 2 ratings in 90 days"
    assert financial_component(many, 10, AS_OF).reason == "renews today with no renewal signal"


def test_an_auc_from_few_churns_says_so() -> None:
    assert sample_note(1) == ("only 1 churned customer scored: one of them scoring otherwise could move the AUC by up to "
                              "1.00, so it is indicative only until about 10 churns are on record")  # fmt: skip
    assert "up to 0.11" in (sample_note(9) or "")
    assert sample_note(MIN_CHURNS) is None and sample_note(250) is None


def test_the_usage_reason_names_the_last_day_used_after_a_week() -> None:
    def reason(last: str) -> str:
        i = Inputs("c", {"seats": 10}, first_usage_day="2026-10-01", last_usage_day=last, active_users_30d=3, active_days_30d=5)
        return usage_component(i, 30, book()).reason
    assert reason("2026-11-23") == "3 of 10 seats active in the last 30 days (30%); last used 8 days ago (2026-11-23)"
    assert reason("2026-11-24") == "3 of 10 seats active in the last 30 days (30%)"  # 7 days: not said
    assert IDLE_SAID_AFTER_DAYS == 7


def test_the_usage_windows_end_where_the_books_usage_data_ends() -> None:
    # Nobody in the book has usage after `through`: the data stopped (a sync not run), not every customer.
    day = AS_OF.date()
    assert [usage_window_end(day, t).isoformat() for t in (None, "2026-11-30", "2026-11-19", "2026-11-01", "2026-10-31")] == [
        "2026-12-01", "2026-12-01", "2026-11-20", "2026-11-02", "2026-12-01"]  # the last: 30 days without data, stale
    assert [(book(t).usage_lag_days, book(t).usage_stale) for t in ("2026-11-30", "2026-11-01", "2026-10-31")] == [
        (0, False), (29, False), (30, True)]  # fmt: skip
    assert usage_note(book()) is None and usage_note(book(None)) is None
    i = Inputs("c", {"seats": 10}, first_usage_day="2026-10-01", last_usage_day="2026-11-10", active_users_30d=3,
               active_days_30d=5, features_30d={"Report"})  # fmt: skip
    late = book("2026-11-19")
    usage = usage_component(i, 30, late)
    assert usage.reason == ("3 of 10 seats active in the 30 days to 2026-11-19 (30%); last used 10 days before that "
                            "(2026-11-10) (the book's usage data ends 2026-11-19, 11 days before as_of's date)")  # fmt: skip
    assert usage.score == 50.0 and usage.inputs["usage_data_through"] == "2026-11-19"
    adoption = adoption_component(i, 15, {"Report", "Export"}, True, late)
    assert adoption.score == 50.0 and adoption.reason.startswith("1 of 2 key features used in the 30 days to 2026-11-19")
    assert "11 days before" in (usage_note(late) or "") and "get_sync_status" in (usage_note(late) or "")
    stale = book("2026-10-31")
    for component in (usage_component(i, 30, stale), adoption_component(i, 15, {"Report"}, True, stale)):
        assert component.score is None and component.inputs["usage_data_through"] == "2026-10-31"
        assert component.reason.startswith("no account of the book has usage recorded in the 30 days before")
    assert "left out of every score" in (usage_note(stale) or "")


def test_a_bounce_after_the_last_touch_is_said_not_scored() -> None:
    def engagement(kinds: dict[str, tuple[int, str]]) -> tuple[float | None, str, dict[str, object]]:
        c = engagement_component(Inputs("c", {}, email_kinds=kinds, emails_sent=2), 10, AS_OF)
        return c.score, c.reason, c.inputs
    opened = {"delivered": (2, "2026-11-20"), "open": (1, "2026-11-27")}
    assert engagement(opened)[:2] == (100, "last e-mail open 4 days ago")
    clicked = engagement({**opened, "click": (1, "2026-11-29")})  # the reason says which touch it was
    assert clicked[:2] == (100, "last e-mail click 2 days ago") and clicked[2]["last_touch_kind"] == "click"
    after = engagement({**opened, "bounce": (1, "2026-11-30T10:00:00Z")})
    assert after[:2] == (100, "last e-mail open 4 days ago; an e-mail bounced since, on 2026-11-30 (is the contact still there?)")
    assert after[2]["bounced_since_last_touch"] == "2026-11-30T10:00:00Z"
    before = engagement({**opened, "dropped": (1, "2026-11-25T10:00:00Z")})  # a touch came after it
    assert before[:2] == (100, "last e-mail open 4 days ago") and "bounced_since_last_touch" not in before[2]
    silent = engagement({"delivered": (2, "2026-11-20"), "bounce": (1, "2026-11-29T08:00:00Z")})
    assert silent[:2] == (0.0, "no open, click or reply on record (2 e-mails sent); an e-mail bounced on 2026-11-29 "
                               "(is the contact still there?)")  # fmt: skip


def test_an_old_nps_answer_says_its_age_and_a_year_old_one_is_not_scored() -> None:
    def sentiment(*answers: tuple[str, int]) -> tuple[float | None, str]:
        c = sentiment_component(Inputs("c", {}, surveys=list(answers)), 15, AS_OF)
        return c.score, c.reason
    assert sentiment(("2026-11-01T10:00:00Z", 9)) == (94.0, "latest NPS answer 9 (promoter), NPS +100 over 180 days")
    assert sentiment(("2026-08-01T10:00:00Z", 9)) == (94.0, "latest NPS answer 9 (promoter) 122 days ago (2026-08-01), "
                                                             "NPS +100 over 180 days")  # fmt: skip
    assert sentiment(("2025-12-01T10:00:00Z", 10)) == (100.0, "latest NPS answer 10 (promoter) 365 days ago (2025-12-01)")
    assert ANSWER_STALE_AFTER_DAYS == 365
    # A promoter two years ago says nothing of today: left out (its weight goes to the others).
    assert sentiment(("2024-11-20T10:00:00Z", 3), ("2025-11-30T10:00:00Z", 10)) == (
        None, "no NPS answer in the last 365 days (the latest, 10 (promoter), 366 days ago on 2025-11-30, is not scored)")


def test_the_note_says_what_a_score_rests_on() -> None:
    contract_only = Inputs("c", {"arr": 24000.0, "renewal_date": "2028-01-15"})
    health = score_customer(contract_only, book(None))
    assert (health.score, health.band, health.confidence) == (100.0, "green", 0.1)
    assert health.note == ("the score rests on financial alone (10% of the scorecard's weight has data): read it with its "
                           "confidence")  # fmt: skip
    # A scorecard that weighs the only component with data 0: null, and the note says why.
    usage_only = BookInputs(AS_OF, ScorecardConfig(weights={"usage": 100, "adoption": 0, "support": 0, "sentiment": 0,
                                                            "engagement": 0, "financial": 0}), None, set(), False, {})  # fmt: skip
    health = score_customer(contract_only, usage_only)
    assert health.score is None and health.band == "unknown"
    assert health.note == "only financial has data, and the scorecard weighs it 0: the score stays null rather than a made-up number"
    assert score_customer(Inputs("c", {}), book(None)).note == ("no component has data yet: the score stays null rather "
                                                                "than a made-up number")  # fmt: skip
