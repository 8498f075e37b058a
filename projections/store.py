"""Where read models live: SQL tables in SQLite (embedded) or PostgreSQL (production).

A :class:`ViewStore` hands out transactions whose cursor speaks one placeholder style
(``?``) on both backends, and owns the per-projection checkpoints and the
one-runner-per-projection lock (PostgreSQL advisory lock; a file lock on SQLite).
View rows and the checkpoint move in the same transaction.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from events.settings import Settings

log = structlog.get_logger(__name__)

BULK_ROWS = 200  # from this many rows, Tx.insert_many with ON CONFLICT goes through a COPY on PostgreSQL
COPY_ROWS = 2  # from this many rows, Tx.insert_many without it COPYs straight into the table on PostgreSQL
KEYS_PER_STATEMENT = 500  # keys bound by one statement of Tx.fetchall_in / execute_in (SQLite allows 32,766)
CHECKPOINTS_DDL = "CREATE TABLE IF NOT EXISTS cs_checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"


class CheckpointConflictError(RuntimeError):
    """Another runner moved the checkpoint: this batch was not applied."""


@dataclass(frozen=True)
class Rows:
    """One statement's result: its column names and its rows as tuples."""

    names: list[str]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, row, strict=True)) for row in self.rows]


def column_names(cursor: Any) -> list[str]:
    """The names of the columns of the cursor's current result. On psycopg, straight from the
    libpq result: ``cursor.description`` builds a ``Column`` object per column with its type
    looked up, in Python, which costs more than reading a small result's rows."""
    result = getattr(cursor, "pgresult", None)
    if result is None:
        return [d[0] for d in cursor.description]
    encoding = cursor.connection.info.encoding
    return [result.fname(n).decode(encoding) for n in range(result.nfields)]


def _parts(keys: Sequence[Any]) -> list[Sequence[Any]]:
    return [keys[start : start + KEYS_PER_STATEMENT] for start in range(0, len(keys), KEYS_PER_STATEMENT)]


class Tx:
    """A cursor inside one transaction, with ``?`` placeholders on every backend.

    With ``defer_inserts`` set (the runner sets it while it folds a whole batch), :meth:`insert`
    holds its rows and writes them together (:meth:`insert_many`) just before the next other
    statement of the transaction, or before it commits: the statements take effect in the same
    order, only grouped. A failing insert then fails at that later statement, so the runner finds
    the failing event again with ``defer_inserts`` off (one statement per event)."""

    def __init__(self, cursor: Any, paramstyle: str) -> None:
        self._cursor = cursor
        self._pg = paramstyle == "format"
        self.defer_inserts = False
        # What a projection keeps from one batch to the next of one pass of the runner (the runner
        # sets it: a dict that lives only while every transaction of the pass has committed, and
        # is dropped with the pass on any failure); None: nothing is carried (read it all here).
        self.carry: dict[str, Any] | None = None
        self._held: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pg else sql

    def flush(self) -> None:
        """Write the rows :meth:`insert` holds (nothing when none)."""
        held, self._held = self._held, {}
        for (table, columns), rows in held.items():
            self.insert_many(table, columns, rows)

    def insert(self, table: str, columns: Sequence[str], row: Sequence[Any]) -> None:
        """INSERT one row now, or (``defer_inserts``) with the other rows of the batch."""
        if self.defer_inserts:
            self._held.setdefault((table, tuple(columns)), []).append(tuple(row))
        else:
            self.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", row)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._held:
            self.flush()
        self._cursor.execute(self._sql(sql), tuple(params))
        return int(self._cursor.rowcount or 0)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self._held:
            self.flush()
        if len(rows) == 1:  # (psycopg's executemany enters pipeline mode: for one row, a cost for nothing)
            self._cursor.execute(self._sql(sql), tuple(rows[0]))
        elif rows:
            self._cursor.executemany(self._sql(sql), [tuple(r) for r in rows])

    def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], on_conflict: str = "") -> None:
        """INSERT ``rows`` (``on_conflict``: an ``ON CONFLICT ...`` clause; a conflict key at most once
        in ``rows``). SQLite runs one prepared statement per row. PostgreSQL COPYs them: straight into
        the table from ``COPY_ROWS`` rows on (a statement per row, even pipelined, costs the client and
        the server two to three times a COPY's CPU per row, already at 20 rows), or with ``on_conflict``,
        from ``BULK_ROWS`` rows on, into a temporary table inserted from in one statement."""
        if self._held:
            self.flush()
        if not rows:
            return
        names = ", ".join(columns)
        if not self._pg or len(rows) < (BULK_ROWS if on_conflict else COPY_ROWS):
            self.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))}) {on_conflict}", rows)
            return
        if not on_conflict:
            with self._cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        staging = f"cs_bulk_{table}"
        self._cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
        with self._cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        self._cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} {on_conflict}")
        self._cursor.execute(f"TRUNCATE {staging}")

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._result(sql, params).dicts()

    def _result(self, sql: str, params: Sequence[Any]) -> Rows:
        rows = self.rows(sql, params)
        return Rows(column_names(self._cursor), rows)  # (the names of this statement's result)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`fetchall` as tuples in the statement's column order (no dict per row: bulk reads)."""
        if self._held:
            self.flush()
        self._cursor.execute(self._sql(sql), tuple(params))
        return self._cursor.fetchall()  # a list on both drivers

    def read_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Rows]:
        """The results of several independent reads, in order. PostgreSQL gets them in one pipeline
        (psycopg's pipeline mode: every statement sent, then every result read, one round trip
        instead of one per statement); SQLite, in process, runs them one after the other."""
        if self._held:
            self.flush()
        if not self._pg:
            return [self._result(sql, params) for sql, params in statements]
        conn = self._cursor.connection
        with ExitStack() as cursors:
            opened = [cursors.enter_context(conn.cursor()) for _ in statements]
            with conn.pipeline():
                for cursor, (sql, params) in zip(opened, statements, strict=True):
                    cursor.execute(self._sql(sql), tuple(params))
            return [Rows(column_names(cursor), cursor.fetchall()) for cursor in opened]

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    def fetchall_in(self, head: str, keys: Sequence[Any], tail: str = "") -> list[dict[str, Any]]:
        """The rows of ``head IN (?, ...) tail`` for every one of ``keys`` (e.g. ``head`` = "SELECT *
        FROM t WHERE id"), read in statements of at most KEYS_PER_STATEMENT keys, in that order
        (``tail``, an ORDER BY say, orders each statement's rows). No keys: no statement."""
        rows: list[dict[str, Any]] = []
        for part in _parts(keys):
            rows += self.fetchall(f"{head} IN ({', '.join('?' * len(part))}){tail}", part)
        return rows

    def execute_in(self, head: str, keys: Sequence[Any]) -> None:
        """``head IN (?, ...)`` (a DELETE say) for every one of ``keys``, KEYS_PER_STATEMENT at a time."""
        for part in _parts(keys):
            self.execute(f"{head} IN ({', '.join('?' * len(part))})", part)

    def get_checkpoint(self, name: str) -> int:
        row = self.fetchone("SELECT position FROM cs_checkpoints WHERE name = ?", (name,))
        return int(row["position"]) if row else 0

    def move_checkpoint(self, name: str, expected: int, new: int) -> None:
        """Advance from ``expected`` to ``new``; anything else means another runner interfered."""
        self.move_checkpoints([name], expected, new)

    def move_checkpoints(self, names: Sequence[str], expected: int, new: int) -> None:
        """Advance every one of ``names`` from ``expected`` to ``new`` in one statement; if any of
        them is elsewhere, another runner interfered (and the caller's transaction is rolled back)."""
        marks = ", ".join("?" * len(names))
        if self.execute(
            f"UPDATE cs_checkpoints SET position = ? WHERE name IN ({marks}) AND position = ?", (new, *names, expected)
        ) != len(names):
            raise CheckpointConflictError(f"checkpoint of {', '.join(names)} is no longer at {expected}")


class RunnerLock(ABC):
    @abstractmethod
    def try_acquire(self) -> bool: ...

    @abstractmethod
    def release(self) -> None: ...


class LogConsumer:
    """A named consumer of the log (a projection runner, a relay): its checkpoint, and the lock
    that lets only one process at a time run it."""

    def __init__(self, name: str, store: ViewStore) -> None:
        self.name = name
        self.store = store
        self.owned = False
        self._lock: RunnerLock = store.runner_lock(name)

    def try_own(self) -> bool:
        """Take the one-runner-per-consumer lock (idempotent)."""
        self.owned = self._lock.try_acquire()
        return self.owned

    def release(self) -> None:
        self._lock.release()
        self.owned = False

    def checkpoint(self) -> int:
        return self.store.checkpoint(self.name)


class ViewStore(ABC):
    backend: str

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction (serialised with other writers)."""

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        """A read-only transaction: one consistent snapshot, no write lock (default: a transaction)."""
        with self.transaction() as tx:
            yield tx

    @abstractmethod
    def runner_lock(self, name: str) -> RunnerLock: ...

    def close(self) -> None:
        """Release connections (default: nothing to release)."""

    def setup(self, statements: Sequence[str]) -> None:
        with self.transaction() as tx:
            tx.execute(CHECKPOINTS_DDL)
            for statement in statements:
                tx.execute(statement)

    def ensure_checkpoint(self, name: str) -> None:
        with self.transaction() as tx:
            if tx.fetchone("SELECT position FROM cs_checkpoints WHERE name = ?", (name,)) is None:
                tx.execute("INSERT INTO cs_checkpoints (name, position) VALUES (?, 0)", (name,))

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only statement (a statement sees one snapshot on its own; default:
        in a :meth:`snapshot`)."""
        with self.snapshot() as tx:
            return tx.rows(sql, params)

    def checkpoint(self, name: str) -> int:
        rows = self.read("SELECT position FROM cs_checkpoints WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def checkpoints(self) -> dict[str, int]:
        """Every projection's position, in one read."""
        return {name: int(position) for name, position in self.read("SELECT name, position FROM cs_checkpoints")}


class _FileLock(RunnerLock):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fh: Any = None

    def try_acquire(self) -> bool:
        if self._fh is not None:
            return True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self._path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class SQLiteViewStore(ViewStore):
    backend = "sqlite"

    def __init__(self, path: Path, lock_dir: Path) -> None:
        self._path = path
        self._lock_dir = lock_dir
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # 64 MiB of page cache (the default is 2 MiB): the usage views are far larger, and
            # folding or reading them through a small cache rewrites the same pages over and over.
            conn.execute("PRAGMA cache_size=-65536")
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._begin("BEGIN IMMEDIATE") as tx:
            yield tx

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        with self._begin("BEGIN DEFERRED") as tx:  # WAL readers never block the writer
            yield tx

    @contextmanager
    def _begin(self, statement: str) -> Iterator[Tx]:
        conn = self._conn()
        conn.execute(statement)
        try:
            tx = Tx(conn.cursor(), "qmark")
            yield tx
            tx.flush()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def runner_lock(self, name: str) -> RunnerLock:
        return _FileLock(self._lock_dir / f"{name}.lock")

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


LOCK_SESSION_NAME = "cs-runner-locks"  # its application_name: how it shows in pg_stat_activity


class _LockSession:
    """One PostgreSQL session that holds every advisory lock of a store: a process's runner,
    relay and job locks cost one connection, and trying a lock that another process holds is a
    statement on it, not a new connection (a new server process) each time. A lock is released
    with ``pg_advisory_unlock``; closing the session releases whatever it still holds."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: Any = None
        self._held: set[int] = set()
        self._mutex = threading.Lock()

    def try_lock(self, key: int) -> bool:
        """False also when the database cannot be reached (logged): the caller tries again later."""
        import psycopg

        with self._mutex:
            if key in self._held:
                return True
            try:
                if self._conn is None or self._conn.closed:
                    self._held.clear()  # a lost session lost its locks with it
                    self._conn = psycopg.connect(self._conninfo, autocommit=True, application_name=LOCK_SESSION_NAME)
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            except psycopg.OperationalError as exc:
                log.warning("store.lock_session_failed", error=str(exc))
                self._close()
                return False
            if row and row[0]:
                self._held.add(key)
                return True
            return False

    def unlock(self, key: int) -> None:
        import psycopg

        with self._mutex:
            if key not in self._held:
                return
            self._held.discard(key)
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except psycopg.OperationalError:
                self._close()  # the session is gone, and its locks with it

    def close(self) -> None:
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._held.clear()


class _AdvisoryLock(RunnerLock):
    """A session-level ``pg_try_advisory_lock`` on the store's lock session."""

    def __init__(self, session: _LockSession, name: str) -> None:
        self._session = session
        self._key = zlib.crc32(f"cs-projection:{name}".encode())  # stable across processes

    def try_acquire(self) -> bool:
        return self._session.try_lock(self._key)

    def release(self) -> None:
        self._session.unlock(self._key)


class PostgresViewStore(ViewStore):
    backend = "postgres"

    def __init__(self, conninfo: str) -> None:
        from psycopg_pool import ConnectionPool

        self._conninfo = conninfo
        self._pool = ConnectionPool(conninfo, min_size=1, max_size=8, open=True)
        self._locks = _LockSession(conninfo)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            tx = Tx(cur, "format")
            yield tx
            tx.flush()

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        """``REPEATABLE READ, READ ONLY``: every statement sees the snapshot the first one took.
        (The default, ``READ COMMITTED``, takes a new snapshot per statement, so a read of several
        statements could mix views from before and after a projection's commit.) The pooled
        connection's settings are put back for the next transaction."""
        from psycopg import IsolationLevel

        with self._pool.connection() as conn:
            conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield Tx(cur, "format")
            finally:
                if not conn.closed:  # (a broken connection is discarded by the pool anyway)
                    conn.isolation_level, conn.read_only = None, False

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement in autocommit on a pooled connection: one round trip, where a snapshot
        costs three (BEGIN, the statement, COMMIT)."""
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                return conn.execute(sql.replace("?", "%s"), tuple(params)).fetchall()
            finally:
                if not conn.closed:  # (a broken connection is discarded by the pool anyway)
                    conn.autocommit = False

    def runner_lock(self, name: str) -> RunnerLock:
        return _AdvisoryLock(self._locks, name)

    def close(self) -> None:
        self._locks.close()
        self._pool.close()


def build_view_store(settings: Settings) -> ViewStore:
    if settings.database_url:
        return PostgresViewStore(settings.postgres.conninfo())
    data_dir = settings.ensure_data_dir()
    return SQLiteViewStore(data_dir / "views.sqlite", data_dir / "locks")
