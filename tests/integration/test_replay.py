"""Replay as of an instant, on both backends: a state captured at T1 is reproduced exactly
after later events; nothing before the registration; ``known_at`` leaves out what was
recorded later (a backfilled churn); erased contacts read '[erased]'."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from events.commands import CommandMeta, RegisterCustomer
from events.replay import customer_state_as_of
from mcp_server.services import Services
from mcp_server.tools.core import overview


def meta_at(moment: datetime | None = None) -> CommandMeta:
    """Fresh metadata: occurred_at is now unless given (a shared constant would freeze it)."""
    return CommandMeta(actor="test", source="test", occurred_at=moment or now())


def now() -> datetime:
    return datetime.now(timezone.utc)


def from_views(services: Services, client_id: str) -> dict[str, Any]:
    """What get_client_overview shows, in the replay's shape."""
    services.engine.ensure_current()
    o = overview(services, client_id)
    contract = o.contract
    return {
        "profile": {
            "name": o.name, **o.profile, "arr": contract.arr, "seats": contract.seats,
            "contract_start": contract.contract_start.isoformat() if contract.contract_start else None,
            "renewal_date": contract.renewal_date.isoformat() if contract.renewal_date else None,
        },
        "status": o.status,
        "churned_on": o.churned_on.isoformat() if o.churned_on else None,
        "contacts": [c.model_dump() for c in o.contacts],
    }  # fmt: skip


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("profile", "status", "churned_on", "contacts")}


def test_replay_as_of_t1_equals_the_state_captured_at_t1(services: Services) -> None:
    app = services.app
    app.register_customer(
        {"external_key": "acme", "name": "Acme", "arr": 42000, "seats": 50, "tier": "growth",
         "renewal_date": "2027-03-01", "contact_name": "Ann Lee", "contact_email": "ann@acme.example"},
        meta_at(),
    )  # fmt: skip
    app.update_customer("acme", {"owner": "Dana", "seats": 55}, meta_at())
    t1 = now()
    captured = customer_state_as_of(app, "acme", t1)
    assert captured is not None
    assert comparable(captured) == from_views(services, "acme")  # replay agrees with the views at T1
    assert [e["type"] for e in captured["events"]] == [
        "customer.registered", "customer.contact_added", "customer.profile_updated", "customer.contract_changed"
    ]  # fmt: skip

    # Later: an update, a second contact (via an import row), a churn.
    app.update_customer("acme", {"arr": 50000, "tier": "enterprise"}, meta_at())
    app.import_customer(
        RegisterCustomer(external_key="acme", name="Acme", contact_name="Bo Chen", contact_email="bo@acme.example"),
        None,
        meta_at(),
    )
    app.churn_customer("acme", {"churned_on": "2026-10-01", "reason": "budget"}, meta_at())

    assert customer_state_as_of(app, "acme", t1) == captured
    latest = customer_state_as_of(app, "acme", now())
    assert latest is not None and comparable(latest) == from_views(services, "acme")
    assert latest["status"] == "churned" and latest["profile"]["arr"] == 50000
    assert [c["email"] for c in latest["contacts"]] == ["ann@acme.example", "bo@acme.example"]
    assert latest["last_position"] == app.last_position() > captured["last_position"]


def test_before_registration_there_is_no_state(services: Services) -> None:
    registered = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)
    services.app.register_customer({"external_key": "globex", "name": "Globex"}, meta_at(registered))
    assert customer_state_as_of(services.app, "globex", registered - timedelta(seconds=1)) is None
    assert customer_state_as_of(services.app, "globex", datetime(2026, 1, 10, 11, 59)) is None  # naive = UTC
    state = customer_state_as_of(services.app, "globex", datetime(2026, 1, 10, 12, 0))
    assert state is not None and state["registered_at"] == registered
    # Known before it was recorded: it did not exist for us yet.
    assert customer_state_as_of(services.app, "globex", now(), known_at=registered) is None


def test_known_at_leaves_out_a_backfill_recorded_later(services: Services) -> None:
    app = services.app
    app.register_customer(
        {"external_key": "initech", "name": "Initech"}, meta_at(datetime(2026, 1, 10, tzinfo=timezone.utc))
    )
    known = now()
    # Recorded now, but it happened on 1 February: an import backfilling the churn.
    app.churn_customer("initech", {"churned_on": "2026-02-01"}, meta_at(datetime(2026, 2, 1, tzinfo=timezone.utc)))
    march = datetime(2026, 3, 1, tzinfo=timezone.utc)

    as_it_happened = customer_state_as_of(app, "initech", march)
    assert as_it_happened is not None and as_it_happened["status"] == "churned"
    assert as_it_happened["churned_on"] == "2026-02-01"
    as_we_knew = customer_state_as_of(app, "initech", march, known_at=known)
    assert as_we_knew is not None and as_we_knew["status"] == "active" and as_we_knew["known_at"] == known
    assert [e["type"] for e in as_we_knew["events"]] == ["customer.registered"]
    january = customer_state_as_of(app, "initech", datetime(2026, 1, 20, tzinfo=timezone.utc))
    assert january is not None and january["status"] == "active"


def test_erased_contacts_read_erased(services: Services) -> None:
    app = services.app
    app.register_customer(
        {"external_key": "umbrella", "name": "Umbrella", "contact_name": "Al", "contact_email": "al@u.example"},
        meta_at(),
    )
    customer_id = app.resolve("umbrella")
    assert services.codec.shred(customer_id)
    state = customer_state_as_of(app, "umbrella", now())
    assert state is not None
    assert [(c["name"], c["email"]) for c in state["contacts"]] == [("[erased]", "[erased]")]
