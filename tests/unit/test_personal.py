"""The personal-data codec: round trip, binding to the customer, shredding, master key."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from uuid import uuid4

import pytest
from cryptography.exceptions import InvalidTag

from events.personal import NONCE_BATCH, NONCE_BYTES, PersonalDataCodec, SQLiteKeyStore, load_master_key
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


def _nonce_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.removeprefix("pd1:"))[:NONCE_BYTES]


def test_nonces_read_in_batches_are_never_repeated(codec: PersonalDataCodec) -> None:
    """Nonces come from a buffer of CSPRNG output now: across several refills every field
    still gets its own, and each token opens with its own nonce."""
    cid = uuid4()
    tokens = [codec.encrypt(cid, f"field {i}") for i in range(3 * NONCE_BATCH + 7)]
    nonces = [_nonce_of(t) for t in tokens]  # type: ignore[arg-type]
    assert len(set(nonces)) == len(nonces) and all(len(n) == NONCE_BYTES for n in nonces)
    assert [codec.decrypt(cid, t) for t in tokens] == [f"field {i}" for i in range(len(tokens))]


def test_shredding_also_forgets_the_cached_cipher(tmp_path: Path, codec: PersonalDataCodec) -> None:
    cid = uuid4()
    codec.encrypt(cid, "before")
    assert codec.shred(cid)
    after = codec.encrypt(cid, "after")  # under a new data key, not the shredded one's cached cipher
    fresh = PersonalDataCodec(SQLiteKeyStore(tmp_path / "keys.sqlite"), KEY)
    assert fresh.decrypt(cid, after) == "after"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_reuses_the_parents_buffered_nonces(codec: PersonalDataCodec) -> None:
    cid = uuid4()
    codec.encrypt(cid, "fills the buffer")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: seal one field, send its nonce, leave at once
        try:
            os.write(write, _nonce_of(codec.encrypt(cid, "child")))  # type: ignore[arg-type]
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, NONCE_BYTES)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = _nonce_of(codec.encrypt(cid, "parent"))  # type: ignore[arg-type]
    assert len(child) == NONCE_BYTES and child != parent
