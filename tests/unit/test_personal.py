"""The personal-data codec: round trip, binding to the customer, shredding, master key."""

from __future__ import annotations

import base64
from pathlib import Path
from uuid import uuid4

import pytest
from cryptography.exceptions import InvalidTag

from events.personal import PersonalDataCodec, SQLiteKeyStore, load_master_key
from events.settings import ConfigurationError, Settings

KEY = bytes(range(32))


@pytest.fixture
def codec(tmp_path: Path) -> PersonalDataCodec:
    return PersonalDataCodec(SQLiteKeyStore(tmp_path / "keys.sqlite"), KEY)


def test_round_trip_and_tokens_differ_each_time(codec: PersonalDataCodec) -> None:
    cid = uuid4()
    a, b = codec.encrypt(cid, "Ann Lee"), codec.encrypt(cid, "Ann Lee")
    assert a != b and a.startswith("pd1:") and "Ann" not in a  # type: ignore[union-attr]
    assert codec.decrypt(cid, a) == codec.decrypt(cid, b) == "Ann Lee"
    assert codec.encrypt(cid, None) is None and codec.decrypt(cid, None) is None


def test_a_token_cannot_be_moved_to_another_customer(codec: PersonalDataCodec) -> None:
    one, two = uuid4(), uuid4()
    token = codec.encrypt(one, "secret")
    codec.encrypt(two, "anything")  # two has a key of its own
    with pytest.raises(InvalidTag):
        codec.decrypt(two, token)


def test_shredding_makes_old_tokens_unreadable_even_for_a_fresh_codec(tmp_path: Path, codec: PersonalDataCodec) -> None:
    cid = uuid4()
    token = codec.encrypt(cid, "Ann Lee")
    assert codec.shred(cid) is True
    assert codec.decrypt(cid, token) is None
    fresh = PersonalDataCodec(SQLiteKeyStore(tmp_path / "keys.sqlite"), KEY)
    assert fresh.decrypt(cid, token) is None


def test_wrong_master_key_is_a_configuration_error(tmp_path: Path, codec: PersonalDataCodec) -> None:
    cid = uuid4()
    token = codec.encrypt(cid, "x")
    other = PersonalDataCodec(SQLiteKeyStore(tmp_path / "keys.sqlite"), bytes(32))
    with pytest.raises(ConfigurationError, match="CS_MASTER_KEY"):
        other.decrypt(cid, token)


def test_master_key_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_master_key(settings)
    assert load_master_key(settings) == first and len(first) == 32
    assert (tmp_path / "master.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_master_key_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CS_MASTER_KEY"):
        load_master_key(Settings(master_key=value))
