"""Personal fields never reach storage in plain text; shredding a key erases them everywhere."""

from __future__ import annotations

import sqlite3

import psycopg

from events.commands import CommandMeta
from mcp_server.services import Services

META = CommandMeta(actor="test", source="test")
NAME, EMAIL = "Zelda Quartermain", "zelda.quartermain@hyrule.example"


def _raw_store_text(services: Services) -> str:
    """Every byte of the event table and the view tables, read with plain SQL."""
    settings = services.settings
    if settings.database_url:
        table = f"{services.app.name.lower()}_events"
        with psycopg.connect(settings.postgres.conninfo()) as conn:
            events = conn.execute(f"SELECT topic, state FROM {table}").fetchall()
            views = conn.execute(
                "SELECT c.name, c.email FROM cs_contacts_v1 c UNION ALL SELECT t.summary, t.details FROM cs_timeline_v1 t"
            ).fetchall()
    else:
        with sqlite3.connect(settings.events_sqlite_path) as conn:
            events = conn.execute("SELECT topic, state FROM stored_events").fetchall()
        with sqlite3.connect(settings.views_sqlite_path) as conn:
            views = conn.execute(
                "SELECT name, email FROM cs_contacts_v1 UNION ALL SELECT summary, details FROM cs_timeline_v1"
            ).fetchall()
    assert events and views
    return "\n".join(
        bytes(v).decode("utf-8", "replace") if isinstance(v, (bytes, memoryview)) else str(v)
        for row in events + views
        for v in row
    )


def test_no_personal_field_in_plain_text(services: Services) -> None:
    services.app.register_customer(
        {"external_key": "hyrule", "name": "Hyrule Inc", "contact_name": NAME, "contact_email": EMAIL}, META
    )
    services.engine.catch_up()
    raw = _raw_store_text(services)
    assert "Hyrule Inc" in raw  # the company name is not personal data: the reader does see the rows
    for secret in (NAME, "Zelda", EMAIL, "zelda.quartermain", "hyrule.example"):
        assert secret.lower() not in raw.lower()
    # ... while the views give them back to a caller allowed to see them.
    contact = services.profiles.get(services.app.resolve("hyrule"))["contacts"][0]  # type: ignore[index]
    assert (contact["name"], contact["email"]) == (NAME, EMAIL)


def test_shredding_the_key_erases_contacts_in_views_and_timeline(services: Services) -> None:
    services.app.register_customer(
        {"external_key": "hyrule", "name": "Hyrule Inc", "contact_name": NAME, "contact_email": EMAIL}, META
    )
    services.app.register_customer(
        {"external_key": "other", "name": "Other", "contact_name": "Kept Person", "contact_email": "kept@other.example"},
        META,
    )
    services.engine.catch_up()
    customer_id = services.app.resolve("hyrule")

    assert services.codec.shred(customer_id) is True

    contact = services.profiles.get(customer_id)["contacts"][0]  # type: ignore[index]
    assert (contact["name"], contact["email"]) == ("[erased]", "[erased]")
    rows, _ = services.timeline.for_customer(customer_id, types=["customer.contact_added"])
    assert rows[0]["details"]["email"] == "[erased]"
    # The events are intact and other customers are untouched.
    assert services.app.get_customer("hyrule").external_key == "hyrule"
    other = services.profiles.get(services.app.resolve("other"))["contacts"][0]  # type: ignore[index]
    assert other["email"] == "kept@other.example"
