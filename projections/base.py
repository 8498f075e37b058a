"""What a projection is: a stable versioned name, its tables, and a fold of one event."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timezone
from typing import Any

from projections.store import Tx


class Projection(ABC):
    """Folds domain events into view rows. ``handle`` must be deterministic: it may use the
    event and the rows already in its tables, never the clock or the outside world, so a
    rebuild produces exactly what incremental processing produced."""

    name: str  # stable and versioned, e.g. "customer_profile_v1"
    tables: tuple[str, ...]
    raw: bool = False  # True: handle() receives the stored notification itself, not a domain event

    @abstractmethod
    def schema(self) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS`` / ``CREATE INDEX IF NOT EXISTS`` statements."""

    @abstractmethod
    def handle(self, tx: Tx, event: Any, position: int) -> None:
        """Apply one event (ignore types it does not care about)."""

    def drop(self, tx: Tx) -> None:
        for table in self.tables:
            tx.execute(f"DROP TABLE IF EXISTS {table}")


def utc_iso(moment: datetime) -> str:
    """A fixed-width UTC timestamp that sorts as text the way it sorts in time (naive = UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
