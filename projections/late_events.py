"""Days whose recorded health a late event may have changed.

The daily health history records each UTC day once it is over, from the events that occurred
before its end. An event recorded on a later day than the one it occurred on (a Zendesk or
Mixpanel sync of yesterday, an imported NPS export, a churn entered with its date) changes
what the days from its occurrence on should have recorded. This projection keeps, per such
day, the log position of the latest late event that occurred on it; the history job
(:func:`projections.health_history.update_history`) recomputes the recorded days from the
earliest marked one and then removes the markers it took into account.

"Late" is a property of the event alone (the UTC day it occurred on is before the UTC day it was
recorded on), and a day's row keeps the highest position, so a rebuild leaves exactly the rows
incremental folding leaves (before the job consumed any).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from projections.base import Projection, as_utc
from projections.store import Tx

LATE_DAYS = "cs_late_event_days_v1"
UPSERT = (f"INSERT INTO {LATE_DAYS} (day, position) VALUES (?, ?) "
          "ON CONFLICT (day) DO UPDATE SET position = excluded.position")  # fmt: skip


def late_day(event: Any) -> str | None:
    """The UTC day an event occurred on, when that is before the UTC day it was recorded on."""
    occurred = getattr(event, "occurred_at", None)
    if occurred is None:
        return None
    day = _utc_day(occurred)
    return day.isoformat() if day < _utc_day(event.timestamp) else None


def _utc_day(moment: datetime) -> date:
    return as_utc(moment).date()


class LateEventsProjection(Projection):
    name = "late_event_days_v1"
    tables = (LATE_DAYS,)

    def schema(self) -> list[str]:
        return [f"CREATE TABLE IF NOT EXISTS {LATE_DAYS} (day TEXT PRIMARY KEY, position BIGINT NOT NULL)"]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        self.handle_batch(tx, [(event, position)])

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        latest: dict[str, int] = {}
        for event, position in items:  # in log order: a day keeps its latest position
            day = late_day(event)
            if day is not None:
                latest[day] = position
        if latest:
            tx.executemany(UPSERT, sorted(latest.items()))
