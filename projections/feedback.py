"""Survey responses (NPS 0-10) and e-mail engagement (SendGrid events), per customer."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from events.signals import MACHINE_OPEN, EmailEvent, SurveyResponse
from projections.base import Projection, utc_iso
from projections.store import Tx

SURVEYS = "cs_survey_responses_v1"
EMAILS = "cs_email_events_v1"
ENGAGED_KINDS = ("open", "click")


class FeedbackProjection(Projection):
    name = "feedback_v1"
    handles = (SurveyResponse.Recorded,)
    tables = (SURVEYS,)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {SURVEYS} (survey_id TEXT PRIMARY KEY, response_id TEXT NOT NULL,
                customer_id TEXT, match TEXT NOT NULL, key_owner TEXT NOT NULL, score BIGINT NOT NULL,
                comment TEXT, email TEXT, responded_at TEXT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{SURVEYS}_customer ON {SURVEYS} (customer_id, responded_at)",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if isinstance(event, SurveyResponse.Recorded):
            tx.insert(
                SURVEYS, ("survey_id", "response_id", "customer_id", "match", "key_owner", "score", "comment", "email",
                          "responded_at"),
                (str(event.originator_id), event.response_id, event.customer_id, event.match, event.key_owner,
                 event.score, event.comment, event.email, utc_iso(event.occurred_at)),
            )  # fmt: skip


class EmailProjection(Projection):
    name = "email_v1"
    handles = (EmailEvent.Recorded,)
    tables = (EMAILS,)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {EMAILS} (email_event_id TEXT PRIMARY KEY, vendor_event_id TEXT NOT NULL,
                customer_id TEXT, match TEXT NOT NULL, kind TEXT NOT NULL, message_id TEXT, url TEXT, reason TEXT,
                occurred_at TEXT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{EMAILS}_customer ON {EMAILS} (customer_id, occurred_at)",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if isinstance(event, EmailEvent.Recorded):
            tx.insert(
                EMAILS, ("email_event_id", "vendor_event_id", "customer_id", "match", "kind", "message_id", "url",
                         "reason", "occurred_at"),
                (str(event.originator_id), event.vendor_event_id, event.customer_id, event.match, event.kind,
                 event.message_id, event.url, event.reason, utc_iso(event.occurred_at)),
            )  # fmt: skip


def nps_of(scores: list[int]) -> float | None:
    """Net Promoter Score: % promoters (9-10) minus % detractors (0-6), or None without answers."""
    if not scores:
        return None
    promoters = sum(1 for s in scores if s >= 9)
    detractors = sum(1 for s in scores if s <= 6)
    return round(100 * (promoters - detractors) / len(scores), 1)


def survey_metrics(tx: Tx, customer_id: UUID, as_of: datetime, window_days: int = 180) -> dict[str, Any]:
    end, start = utc_iso(as_of), utc_iso(as_of - timedelta(days=window_days))
    rows = tx.fetchall(f"SELECT score, responded_at FROM {SURVEYS} WHERE customer_id = ? AND responded_at < ? "
                       "ORDER BY responded_at", (str(customer_id), end))  # fmt: skip
    window = [int(r["score"]) for r in rows if r["responded_at"] >= start]
    latest = rows[-1] if rows else None
    return {
        "responses_total": len(rows),
        "latest_score": int(latest["score"]) if latest else None,
        "latest_at": latest["responded_at"] if latest else None,
        f"nps_{window_days}d": nps_of(window),
        f"responses_{window_days}d": len(window),
    }


def email_metrics(tx: Tx, customer_id: UUID, as_of: datetime) -> dict[str, Any]:
    end = utc_iso(as_of)
    rows = tx.fetchall(f"SELECT kind, MAX(occurred_at) AS last_at, COUNT(*) AS n FROM {EMAILS} "
                       "WHERE customer_id = ? AND occurred_at < ? GROUP BY kind", (str(customer_id), end))  # fmt: skip
    by_kind = {r["kind"]: (int(r["n"]), r["last_at"]) for r in rows}
    engaged = [by_kind[k][1] for k in ENGAGED_KINDS if k in by_kind]
    return {
        "events_total": sum(n for n, _ in by_kind.values()),
        "delivered": by_kind.get("delivered", (0, None))[0],
        "opens": by_kind.get("open", (0, None))[0],
        "clicks": by_kind.get("click", (0, None))[0],
        "machine_opens": by_kind.get(MACHINE_OPEN, (0, None))[0],  # Apple Mail Privacy Protection: not counted as opens
        "bounces": by_kind.get("bounce", (0, None))[0] + by_kind.get("dropped", (0, None))[0],
        "last_engaged_at": max(engaged) if engaged else None,
    }
