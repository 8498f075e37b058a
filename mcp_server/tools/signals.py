"""The signals summary shown in the overview (and used by health): usage, support, NPS, e-mail,
each computed from the views as of an instant, each saying so when there is no data."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from projections.feedback import email_metrics, survey_metrics
from projections.store import ViewStore
from projections.support import support_metrics
from projections.usage import usage_window


def signals_as_of(store: ViewStore, customer_id: UUID, seats: int | None, as_of: datetime) -> dict[str, Any]:
    with store.snapshot() as tx:
        usage = usage_window(tx, customer_id, as_of.date(), 30)
        support = support_metrics(tx, customer_id, as_of)
        surveys = survey_metrics(tx, customer_id, as_of)
        emails = email_metrics(tx, customer_id, as_of)
    if usage["active_days"] == 0:
        usage = {"note": f"no usage data in the 30 days before {as_of.date()}", **usage}
    elif seats:
        usage["active_users_per_seat"] = round(usage["active_users"] / seats, 3)
    if support["tickets_total"] == 0:
        support = {"note": "no tickets recorded for this customer", **support}
    if surveys["responses_total"] == 0:
        surveys = {"note": "no NPS responses recorded for this customer", **surveys}
    if emails["events_total"] == 0:
        emails = {"note": "no e-mail events recorded for this customer", **emails}
    return {"usage_30d": usage, "support": support, "nps": surveys, "email": emails}
