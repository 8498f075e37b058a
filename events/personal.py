"""Personal-data encryption: one data key per customer, wrapped by the master key.

Personal fields (contact names, e-mail addresses, customer free text) never reach the event
store in plain text. :class:`PersonalDataCodec` encrypts each field with AES-256-GCM under
the customer's own data key (the customer id is the associated data, so a token cannot be
moved to another customer). Data keys are stored wrapped (RFC 3394 AES key wrap) by the
master key in a small key table *outside* the event log. Destroying a customer's data key
(crypto-shredding) makes every personal field of that customer unreadable forever while the
events themselves stay intact; :meth:`PersonalDataCodec.decrypt` then returns ``None``.

Library choice: ``cryptography`` (AESGCM, aes_key_wrap) — audited primitives, no home-made
crypto.
"""

from __future__ import annotations

import base64
import os
import secrets
import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from events.settings import ConfigurationError, Settings

TOKEN_PREFIX = "pd1:"
ERASED = "[erased]"


def load_master_key(settings: Settings) -> bytes:
    """``CS_MASTER_KEY`` (base64 of 32 bytes), else a key generated once into the data dir."""
    if settings.master_key:
        try:
            key = base64.b64decode(settings.master_key, validate=True)
        except ValueError as exc:
            raise ConfigurationError("CS_MASTER_KEY must be base64 (e.g. `openssl rand -base64 32`)") from exc
        if len(key) != 32:
            raise ConfigurationError(f"CS_MASTER_KEY must decode to 32 bytes, got {len(key)}")
        return key
    path = settings.ensure_data_dir() / "master.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(32)))
    return load_master_key(Settings(master_key=path.read_text().strip()))


class KeyStore(ABC):
    """Wrapped data keys by customer id. Deleting a row is crypto-shredding."""

    @abstractmethod
    def get(self, customer_id: UUID) -> bytes | None: ...

    @abstractmethod
    def put_if_absent(self, customer_id: UUID, wrapped: bytes) -> None: ...

    @abstractmethod
    def delete(self, customer_id: UUID) -> bool: ...

    def close(self) -> None:
        """Release connections (default: nothing to release)."""


class SQLiteKeyStore(KeyStore):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS data_keys (customer_id TEXT PRIMARY KEY, wrapped BLOB NOT NULL)"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def get(self, customer_id: UUID) -> bytes | None:
        row = self._conn().execute(
            "SELECT wrapped FROM data_keys WHERE customer_id = ?", (str(customer_id),)
        ).fetchone()
        return bytes(row[0]) if row else None

    def put_if_absent(self, customer_id: UUID, wrapped: bytes) -> None:
        self._conn().execute(
            "INSERT OR IGNORE INTO data_keys (customer_id, wrapped) VALUES (?, ?)", (str(customer_id), wrapped)
        )

    def delete(self, customer_id: UUID) -> bool:
        cur = self._conn().execute("DELETE FROM data_keys WHERE customer_id = ?", (str(customer_id),))
        return cur.rowcount > 0

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class PostgresKeyStore(KeyStore):
    def __init__(self, conninfo: str) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(conninfo, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True)
        with self._pool.connection() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS cs_data_keys (customer_id UUID PRIMARY KEY, wrapped BYTEA NOT NULL)"
            )

    def get(self, customer_id: UUID) -> bytes | None:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT wrapped FROM cs_data_keys WHERE customer_id = %s", (customer_id,)).fetchone()
        return bytes(row[0]) if row else None

    def put_if_absent(self, customer_id: UUID, wrapped: bytes) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO cs_data_keys (customer_id, wrapped) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (customer_id, wrapped),
            )

    def delete(self, customer_id: UUID) -> bool:
        with self._pool.connection() as conn:
            cur = conn.execute("DELETE FROM cs_data_keys WHERE customer_id = %s", (customer_id,))
        return cur.rowcount > 0

    def close(self) -> None:
        self._pool.close()


NONCE_BYTES = 12  # AES-GCM's 96-bit nonce, random for every field sealed
NONCE_BATCH = 256  # nonces read from the OS at once


class _Nonces:
    """Random AES-GCM nonces, read from the OS CSPRNG ``NONCE_BATCH`` at a time.

    ``os.urandom`` is a system call per field otherwise, which showed in the webhook
    profiles (about a tenth of the ingest thread). Every nonce is still an unpredictable
    slice of the CSPRNG's output, used once: the slices are handed out under a lock, and a
    forked child drops the buffer it inherited (else parent and child would seal with the
    same nonces, which under one key breaks GCM)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0

    def __call__(self) -> bytes:
        with self._lock:
            if self._at >= len(self._buffer):
                self._buffer, self._at = os.urandom(NONCE_BYTES * NONCE_BATCH), 0
            nonce = self._buffer[self._at : self._at + NONCE_BYTES]
            self._at += NONCE_BYTES
            return nonce

    def forget(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at the fork stays held in the child
        self._buffer, self._at = b"", 0


_nonce = _Nonces()
os.register_at_fork(after_in_child=_nonce.forget)


class PersonalDataCodec:
    """Encrypts and decrypts personal fields under per-customer data keys."""

    def __init__(self, keystore: KeyStore, master_key: bytes) -> None:
        self._keystore = keystore
        self._master = master_key
        self._cache: dict[UUID, bytes] = {}  # only keys that exist; never "absent"
        self._sealers: dict[UUID, AESGCM] = {}  # by customer, for the keys in the cache
        self._lock = threading.Lock()

    def _data_key(self, customer_id: UUID, *, create: bool) -> bytes | None:
        with self._lock:
            cached = self._cache.get(customer_id)
        if cached is not None:
            return cached
        wrapped = self._keystore.get(customer_id)
        if wrapped is None and create:
            self._keystore.put_if_absent(customer_id, aes_key_wrap(self._master, secrets.token_bytes(32)))
            wrapped = self._keystore.get(customer_id)  # another writer may have won the race
        key = None
        if wrapped is not None:
            try:
                key = aes_key_unwrap(self._master, wrapped)
            except InvalidUnwrap as exc:
                raise ConfigurationError(
                    "CS_MASTER_KEY does not match the key that wrapped the stored data keys"
                ) from exc
        if key is not None:
            with self._lock:
                self._cache[customer_id] = key
        return key

    def encrypt(self, customer_id: UUID, plaintext: str | None) -> str | None:
        """A ``pd1:`` token for the field, or None for an absent value."""
        if plaintext is None or plaintext == "":
            return plaintext
        sealer = self._sealers.get(customer_id)
        if sealer is None:
            key = self._data_key(customer_id, create=True)
            assert key is not None
            sealer = AESGCM(key)
            with self._lock:
                if customer_id in self._cache:  # not shredded meanwhile
                    self._sealers[customer_id] = sealer
        nonce = _nonce()
        sealed = sealer.encrypt(nonce, plaintext.encode(), customer_id.bytes)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, customer_id: UUID, token: str | None) -> str | None:
        """The plain text, or None when the customer's key was destroyed (erased)."""
        if token is None or token == "":
            return token
        if not token.startswith(TOKEN_PREFIX):
            raise ValueError("not a personal-data token")
        key = self._data_key(customer_id, create=False)
        if key is None:
            return None
        raw = base64.urlsafe_b64decode(token[len(TOKEN_PREFIX) :])
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], customer_id.bytes).decode()

    def close(self) -> None:
        self._keystore.close()

    def shred(self, customer_id: UUID) -> bool:
        """Destroy the customer's data key. Irreversible by design."""
        deleted = self._keystore.delete(customer_id)
        with self._lock:
            self._cache.pop(customer_id, None)
            self._sealers.pop(customer_id, None)
        return deleted


def build_codec(settings: Settings) -> PersonalDataCodec:
    keystore: KeyStore
    if settings.database_url:
        keystore = PostgresKeyStore(settings.postgres.conninfo())
    else:
        keystore = SQLiteKeyStore(settings.ensure_data_dir() / "keys.sqlite")
    return PersonalDataCodec(keystore, load_master_key(settings))
