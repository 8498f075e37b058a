"""Commands on the application, on SQLite and PostgreSQL: idempotence, changes, bad input."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from events.commands import CommandMeta
from events.errors import CustomerNotFoundError, InvalidInputError
from mcp_server.services import Services

META = CommandMeta(actor="test", source="test")
ACME: dict[str, Any] = {
    "external_key": "acme",
    "name": "Acme Corp",
    "arr": 12000,
    "seats": 20,
    "contract_start": "2026-01-01",
    "renewal_date": "2027-01-01",
    "contact_name": "Jane Roe",
    "contact_email": "Jane.Roe@acme.example",
}


def test_register_is_idempotent_on_the_external_key(services: Services) -> None:
    first = services.app.register_customer(ACME, META)
    head = services.app.last_position()
    again = services.app.register_customer({**ACME, "arr": 99}, META)

    assert first.status == "created" and first.position == head
    assert again.status == "existing" and again.position is None
    assert again.customer_id == first.customer_id
    assert services.app.last_position() == head
    assert services.app.get_customer("ACME").profile["arr"] == 12000


def test_update_records_old_and_new_values(services: Services) -> None:
    services.app.register_customer(ACME, META)
    result = services.app.update_customer("acme", {"arr": 15000, "tier": "Growth"}, META)

    assert result.status == "updated"
    assert sorted(result.changes, key=lambda c: c["field"]) == [
        {"field": "arr", "old": 12000.0, "new": 15000.0},
        {"field": "tier", "old": None, "new": "growth"},
    ]
    unchanged = services.app.update_customer("acme", {"arr": 15000}, META)
    assert unchanged.status == "unchanged" and unchanged.position is None


@pytest.mark.parametrize(
    ("client_id", "changes", "field"),
    [
        ("acme", {"arr": -1}, "arr"),
        ("acme", {"seats": "many"}, "seats"),
        ("acme", {"colour": "red"}, "changes.colour"),
        ("acme", {"renewal_date": "2025-01-01"}, "renewal_date"),
        ("acme", {}, "changes"),
    ],
)
def test_bad_update_names_the_field_and_records_nothing(
    services: Services, client_id: str, changes: dict[str, Any], field: str
) -> None:
    services.app.register_customer(ACME, META)
    head = services.app.last_position()
    with pytest.raises(InvalidInputError) as caught:
        services.app.update_customer(client_id, changes, META)
    assert caught.value.field == field
    assert services.app.last_position() == head


def test_unknown_client_id_is_a_clear_error(services: Services) -> None:
    with pytest.raises(CustomerNotFoundError, match="client_id: no customer 'ghost'"):
        services.app.update_customer("ghost", {"arr": 1}, META)
    assert services.app.last_position() == 0


def test_negative_arr_at_registration_records_nothing(services: Services) -> None:
    with pytest.raises(InvalidInputError) as caught:
        services.app.register_customer({**ACME, "arr": -5}, META)
    assert caught.value.field == "arr"
    assert services.app.last_position() == 0


def test_events_carry_actor_source_and_occurred_at(services: Services) -> None:
    meta = CommandMeta(actor="csm:dana", source="mcp.register_client", source_id="req-7")
    services.app.register_customer(ACME, meta)
    events = [services.app.mapper.to_domain_event(n) for n in services.app.recorder.select_notifications(1, 10)]
    assert [type(e).__qualname__ for e in events] == ["Customer.Registered", "Customer.ContactAdded"]
    for e in events:
        assert (e.actor, e.source, e.source_id) == ("csm:dana", "mcp.register_client", "req-7")
    # The account existed from its contract start: registration is backdated to it; the
    # contact was added now.
    assert events[0].occurred_at == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert events[1].occurred_at == meta.occurred_at
