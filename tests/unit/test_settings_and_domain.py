"""Settings parsing, key derivation, event naming and cursors."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.commands import slugify
from events.domain import Customer, customer_id_for, event_type
from events.errors import InvalidInputError
from events.settings import ConfigurationError, Settings
from projections.cursor import decode_cursor, encode_cursor


def test_defaults_are_embedded_sqlite_under_data() -> None:
    settings = Settings.from_env({})
    assert settings.backend == "sqlite" and settings.data_dir == Path("./data")
    assert settings.kafka_topic == "cs.events"


def test_database_url_selects_postgres_over_tcp() -> None:
    settings = Settings.from_env({"CS_DATABASE_URL": "postgresql://cs:p%40ss@db.internal:6543/cs"})
    env = settings.eventsourcing_env()
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_PASSWORD"]) == ("db.internal", "6543", "p@ss")


@pytest.mark.parametrize("url", ["mysql://x@h/db", "postgresql://h", "postgresql:///db?host=/var/run"])
def test_bad_database_url_names_the_variable(url: str) -> None:
    with pytest.raises(ConfigurationError, match="CS_DATABASE_URL"):
        Settings.from_env({"CS_DATABASE_URL": url})


def test_keys_are_case_insensitive_and_slugs_are_clean() -> None:
    assert customer_id_for("Acme-Corp") == customer_id_for(" acme-corp ")
    assert slugify("Acme Corp. (EU)") == "acme-corp-eu"


def test_event_type_names() -> None:
    assert event_type(object.__new__(Customer.ContactAdded)) == "customer.contact_added"
    assert event_type(object.__new__(Customer.Registered)) == "customer.registered"


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(12.5, "id"), 2) == [12.5, "id"]
    assert decode_cursor(None, 2) is None
    with pytest.raises(InvalidInputError, match="cursor"):
        decode_cursor("garbage", 2)
