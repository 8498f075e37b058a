"""What a projection is: a stable versioned name, its tables, and a fold of one event."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from events.envelope import hex_uuid_text
from projections.store import Tx


class Projection(ABC):
    """Folds domain events into view rows. ``handle`` must be deterministic: it may use the
    event and the rows already in its tables, never the clock or the outside world, so a
    rebuild produces exactly what incremental processing produced."""

    name: str  # stable and versioned, e.g. "customer_profile_v1"
    tables: tuple[str, ...]
    raw: bool = False  # True: handle() receives the stored notification itself, not a domain event
    # The event classes handle() acts on, when known: the runner gives the projection only those,
    # in a shared pass as on its own, and decodes no others for it (most of the log is usage,
    # which most projections ignore); the default handle_batch also passes handle() only those.
    # It must name every class handle() acts on. None: every event.
    handles: tuple[type, ...] | None = None

    @abstractmethod
    def schema(self) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS`` / ``CREATE INDEX IF NOT EXISTS`` statements."""

    def schema_for(self, backend: str) -> list[str]:
        """The statements of :meth:`schema` on ``backend`` (``sqlite`` / ``postgres``), for a
        projection whose schema needs the backend's own SQL (a view over JSON, say)."""
        return self.schema()

    @abstractmethod
    def handle(self, tx: Tx, event: Any, position: int) -> None:
        """Apply one event (ignore types it does not care about)."""

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """Apply ``(event, position)`` pairs in log order, in one transaction. It must leave
        exactly the rows that ``handle`` on each in turn leaves (a projection overrides it to
        write a whole batch in a few statements); a failing event is then found with ``handle``."""
        kinds = self.handles
        for event, position in items:
            if kinds is None or isinstance(event, kinds):
                self.handle(tx, event, position)

    def drop(self, tx: Tx) -> None:
        for table in self.tables:
            tx.execute(f"DROP TABLE IF EXISTS {table}")


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 ("1 open ticket", "3 open tickets")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (naive = UTC); one already in UTC, as stored moments are,
    as it is. (The projections' one such helper; ``events.replay.as_utc`` is the events' own.)"""
    if moment.tzinfo is timezone.utc:
        return moment
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def utc_iso(moment: datetime) -> str:
    """A fixed-width UTC timestamp that sorts as text the way it sorts in time (naive = UTC):
    ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``, the text ``strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")``
    writes, through ``isoformat`` (under half its CPU; every timeline, ticket and e-mail row
    writes one or two). Before year 1000 strftime writes the year unpadded, and still does here."""
    moment = as_utc(moment)
    if moment.year < 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    return moment.isoformat(timespec="microseconds")


def uuid_text(value: Any) -> str:
    """``str(value)``: for a UUID, its canonical text from its bytes' hex (half the CPU of
    ``UUID.__str__``, on the hot paths of a rebuild that turn every stored event's id into text)."""
    return hex_uuid_text(value.bytes.hex()) if type(value) is UUID else str(value)
