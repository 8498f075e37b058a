"""The catch-up runner on both backends: rebuild == incremental, poison events, one runner."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from events.commands import CommandMeta
from mcp_server.services import Services, open_services
from projections.runner import ProjectionStoppedError

META = CommandMeta(actor="test", source="test")


def _populate(services: Services) -> None:
    app = services.app
    for i in range(12):
        app.register_customer(
            {
                "external_key": f"c{i:02d}",
                "name": f"Customer {i}",
                "arr": 1000 * i,
                "seats": i,
                "renewal_date": f"2027-0{1 + i % 9}-15",
                "contact_name": f"Person {i}",
                "contact_email": f"p{i}@c{i}.example",
            },
            META,
        )
    for i in range(0, 12, 3):
        app.update_customer(f"c{i:02d}", {"arr": 500 + i, "tier": "growth", "owner": "Dana"}, META)
    app.churn_customer("c05", {"churned_on": "2026-10-01", "reason": "budget"}, META)


def _rows(services: Services) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with services.store.transaction() as tx:
        for runner in services.engine.runners.values():
            for table in runner.projection.tables:
                rows = tx.fetchall(f"SELECT * FROM {table}")
                out[table] = sorted(rows, key=lambda r: sorted((k, str(v)) for k, v in r.items()))
    return out


def test_rebuild_reproduces_every_row(services: Services) -> None:
    _populate(services)
    services.engine.catch_up()  # processed incrementally, batch by batch as written
    incremental = _rows(services)
    assert len(incremental["cs_customers_v1"]) == 12
    assert len(incremental["cs_timeline_v1"]) == services.app.last_position()

    with services.store.transaction() as tx:
        for runner in services.engine.runners.values():
            runner.projection.drop(tx)
    processed = services.engine.rebuild()

    assert processed == len(services.engine.runners) * services.app.last_position()
    assert _rows(services) == incremental


def test_incremental_in_small_steps_equals_one_pass(services: Services) -> None:
    app = services.app
    app.register_customer({"external_key": "a", "name": "A", "arr": 1}, META)
    services.engine.catch_up()
    app.update_customer("a", {"arr": 2}, META)
    services.engine.catch_up()
    app.update_customer("a", {"arr": 3, "seats": 4}, META)
    services.engine.catch_up()
    stepwise = _rows(services)
    services.engine.rebuild()
    assert _rows(services) == stepwise


def test_poison_event_stops_the_runner_and_keeps_the_checkpoint(services: Services) -> None:
    app = services.app
    app.register_customer({"external_key": "ok", "name": "Fine"}, META)
    good_head = app.last_position()
    # A stored event whose topic resolves to no class: no projection can decode it.
    poison = StoredEvent(
        originator_id=app.resolve("ok"),
        originator_version=2,
        topic="events.domain:Customer.Vanished",
        state=b"{}",
    )
    app.recorder.insert_events([poison])
    poison_position = app.last_position()
    app.register_customer({"external_key": "after", "name": "After"}, META)

    with pytest.raises(ProjectionStoppedError) as caught:
        services.engine.catch_up()

    assert caught.value.failure.position == poison_position
    decoding = {n: r for n, r in services.engine.runners.items() if not r.projection.raw}  # raw: audit chain
    for name, runner in decoding.items():
        assert runner.checkpoint() == good_head, name
    # Never skipped: trying again stops at the same place, and reads say why.
    with pytest.raises(ProjectionStoppedError):
        services.engine.catch_up()
    with pytest.raises(ProjectionStoppedError, match=f"stopped at event {poison_position}"):
        services.engine.ensure_current(timeout=1)
    assert all(r.checkpoint() == good_head for r in decoding.values())
    # The audit chain links stored bytes, so the poison event is linked like any other.
    assert services.engine.runners["audit_chain_v1"].checkpoint() == app.last_position()


def test_only_one_process_runs_a_projection(services: Services) -> None:
    assert all(r.owned for r in services.engine.runners.values())
    with open_services(services.settings, run_projections=True) as second:
        assert second.engine.own() == []
        services.app.register_customer({"external_key": "x", "name": "X"}, META)
        # The second process does not run them; it waits for the owner's checkpoint.
        services.engine.catch_up()
        second.engine.wait_for(services.app.last_position(), timeout=5)
        assert second.profiles.get(second.app.resolve("x")) is not None
    services.engine.release()
    with open_services(services.settings, run_projections=True) as third:
        assert sorted(third.engine.own()) == sorted(services.engine.runners)
