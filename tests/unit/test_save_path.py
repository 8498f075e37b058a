"""The recording path made cheaper: `CustomerSuccess.save` collects events with nominal type
checks instead of eventsourcing's runtime Protocol checks, and must collect exactly what the
library's ProcessingEvent collects, in the same order, and store it as the library's save
does; signal ids answered by a cache are the same uuid5."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from eventsourcing.application import Application, ProcessingEvent

from events.application import CustomerSuccess, _Collected
from events.personal import build_codec
from events.settings import Settings
from events.signals import Ticket, signal_id

AT = datetime(2026, 11, 2, 9, 30, tzinfo=timezone.utc)


def _ticket(vendor_id: str, status: str = "open") -> Ticket:
    kw: dict[str, Any] = {"actor": "test", "source": "zendesk.webhook", "source_id": vendor_id, "occurred_at": AT}
    ticket = Ticket(vendor="zendesk", vendor_id=vendor_id, customer_id=None, match="none", key_owner=str(signal_id("k", vendor_id)),
                    status=status, priority="normal", subject=None, requester=None, channel="web",
                    snapshot_at=AT.isoformat(), **kw)  # fmt: skip
    ticket.change(status="pending", priority="high", snapshot_at=(AT + timedelta(hours=1)).isoformat(),
                  **{**kw, "occurred_at": AT + timedelta(hours=1)})  # fmt: skip
    return ticket


def _mixed() -> list[Any]:
    """Loose events, None, and aggregates with pending events, interleaved."""
    loose = _ticket("900")
    events = loose.collect_events()
    return [events[0], None, _ticket("901"), events[1], _ticket("902")]


def test_collects_the_same_events_in_the_same_order_as_the_library() -> None:
    objs = _mixed()
    twin = copy.deepcopy(objs)
    ours, library = _Collected(), ProcessingEvent()
    ours.collect_events(*objs, marker=1)
    library.collect_events(*twin, marker=1)
    assert ours.events == library.events and len(ours.events) == 6
    assert list(ours.aggregates) == list(library.aggregates) and ours.saved_kwargs == library.saved_kwargs


def test_stores_what_the_library_save_stores(tmp_path: Path) -> None:
    def app_in(name: str) -> CustomerSuccess:
        settings = Settings(data_dir=tmp_path / name, master_key="A" * 43 + "=")
        return CustomerSuccess(settings, build_codec(settings))

    ours, library = app_in("ours"), app_in("library")
    objs = _mixed()
    twin = copy.deepcopy(objs)
    ours_recordings = ours.save(*objs)
    library_recordings = Application.save(library, *twin)

    def stored(app: CustomerSuccess) -> list[tuple[Any, ...]]:
        return [(n.id, n.originator_id, n.originator_version, n.topic, n.state)
                for n in app.recorder.select_notifications(start=1, limit=100)]  # fmt: skip

    assert stored(ours) == stored(library) and len(stored(ours)) == 6
    assert [r.notification.id for r in ours_recordings] == [r.notification.id for r in library_recordings]
    for app in (ours, library):
        app.close()


def test_signal_ids_from_the_cache_are_the_uuid5_of_the_name() -> None:
    from uuid import uuid5

    from events.signals import SIGNAL_NAMESPACE

    for _ in range(2):  # computed, then answered by the cache
        assert signal_id("ticket", "zendesk", 42) == uuid5(SIGNAL_NAMESPACE, "ticket:zendesk:42")
        assert signal_id("ticket", "zendesk", True) == uuid5(SIGNAL_NAMESPACE, "ticket:zendesk:True")
        assert signal_id("usage", "c", "", "2026-11-02") == uuid5(SIGNAL_NAMESPACE, "usage:c::2026-11-02")
