"""The view store's transactions on both backends."""

from __future__ import annotations

import threading

import pytest

from events.settings import Settings
from projections.store import LOCK_SESSION_NAME, build_view_store


def test_a_snapshot_keeps_its_state_while_a_writer_commits(settings: Settings) -> None:
    """A read of several statements (a health score reads a dozen) sees one state even when a
    projection commits between two of them; the next transaction sees the commit and can write."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = build_view_store(settings)
    try:
        store.setup([])
        store.ensure_checkpoint("probe")

        def commit_meanwhile() -> None:
            with store.transaction() as tx:
                tx.move_checkpoint("probe", 0, 1)

        with store.snapshot() as tx:
            assert tx.get_checkpoint("probe") == 0
            writer = threading.Thread(target=commit_meanwhile)  # its own connection
            writer.start()
            writer.join(timeout=30)
            assert not writer.is_alive()
            assert tx.get_checkpoint("probe") == 0  # the snapshot's state, not the commit's

        assert store.checkpoint("probe") == 1
        with store.transaction() as tx:  # a pooled connection left read-only would refuse this
            tx.move_checkpoint("probe", 1, 2)
        if store.backend == "postgres":  # read only there: a write inside a snapshot is refused
            import psycopg

            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), store.snapshot() as tx:
                tx.execute("UPDATE cs_checkpoints SET position = 3 WHERE name = 'probe'")
        assert store.checkpoint("probe") == 2
    finally:
        store.close()


def test_runner_locks_exclude_another_store_and_share_one_session(settings: Settings) -> None:
    """A process's locks (a dozen runners, relays, jobs) exclude every other process's; on
    PostgreSQL they all live on one session, and trying one held elsewhere opens nothing."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mine, theirs = build_view_store(settings), build_view_store(settings)
    try:
        names = [f"probe-{n}" for n in range(13)]
        held, wanted = [mine.runner_lock(n) for n in names], [theirs.runner_lock(n) for n in names]
        for store in (mine, theirs):
            store.setup([])  # each store's pool has its connection: only lock sessions are counted below
        sessions_before = _sessions(settings) if settings.database_url else 0
        assert all(lock.try_acquire() for lock in held)
        assert all(lock.try_acquire() for lock in held)  # held: taking it again is a no-op
        for _ in range(3):
            assert not any(lock.try_acquire() for lock in wanted)
        if settings.database_url:  # one lock session per store, whatever the locks and tries
            assert _sessions(settings) - sessions_before == 2

        held[0].release()
        held[0].release()  # releasing twice is harmless
        assert wanted[0].try_acquire()
        assert not held[0].try_acquire() and not wanted[1].try_acquire()
        if settings.database_url:
            mine.close()  # closing the lock session releases everything it held
        else:
            for lock in held:
                lock.release()
        assert all(lock.try_acquire() for lock in wanted)
    finally:
        mine.close()
        theirs.close()


def _sessions(settings: Settings) -> int:
    """Runner-lock sessions on the test database (PostgreSQL). (Counting every session would count
    the connection pools too, which open connections in the background when they see fit.)"""
    import psycopg

    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
                           (LOCK_SESSION_NAME,)).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


def test_read_all_gives_each_statement_its_own_rows(settings: Settings) -> None:
    """Several reads sent together (one pipeline on PostgreSQL) give what each gives on its own,
    in order, empty results and column names included; a failing one raises and spoils nothing
    for the next transaction on the pooled connection."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = build_view_store(settings)
    try:
        store.setup([])
        for n, name in enumerate(("alpha", "bravo", "charlie")):
            store.ensure_checkpoint(name)
            with store.transaction() as tx:
                tx.move_checkpoint(name, 0, 10 * (n + 1))
        statements = [
            ("SELECT name, position FROM cs_checkpoints WHERE position > ? ORDER BY name", [10]),
            ("SELECT position AS at FROM cs_checkpoints WHERE name = ?", ["alpha"]),
            ("SELECT name FROM cs_checkpoints WHERE name = ?", ["nobody"]),
            ("SELECT COUNT(*) AS n, MAX(position) AS top FROM cs_checkpoints WHERE name IN (?, ?)", ["alpha", "charlie"]),
        ]
        with store.snapshot() as tx:
            one_by_one = [tx.fetchall(sql, params) for sql, params in statements]
            together = tx.read_all(statements)
        assert [r.dicts() for r in together] == one_by_one
        assert one_by_one == [[{"name": "bravo", "position": 20}, {"name": "charlie", "position": 30}],
                              [{"at": 10}], [], [{"n": 2, "top": 30}]]  # fmt: skip
        assert together[0].rows == [("bravo", 20), ("charlie", 30)]

        with pytest.raises(Exception) as failed, store.snapshot() as tx:
            tx.read_all([statements[1], ("SELECT position FROM no_such_table", []), statements[0]])
        assert "no_such_table" in str(failed.value)
        for _ in range(3):  # every pooled connection is usable again
            with store.snapshot() as tx:
                assert [r.dicts() for r in tx.read_all(statements)] == one_by_one
    finally:
        store.close()


def test_reads_and_deletes_by_many_keys_cover_every_key_across_statements(settings: Settings) -> None:
    """Tx.fetchall_in / execute_in over more keys than one statement binds: every key's rows, in
    key order across statements (each statement's rows in its own ORDER BY), keys not found left
    out, no statement for no keys; the DELETE removes exactly the keys given."""
    from projections.store import KEYS_PER_STATEMENT

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = build_view_store(settings)
    try:
        store.setup([])
        count = 2 * KEYS_PER_STATEMENT + 7
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t_keys (k TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (k, n))")
            tx.insert_many("t_keys", ("k", "n"), [(f"k{i:05d}", n) for i in range(count) for n in (2, 1)])
        wanted = [f"k{i:05d}" for i in range(0, count, 2)] + ["missing"]  # every other key, and one absent
        with store.snapshot() as tx:
            got = tx.fetchall_in("SELECT k, n FROM t_keys WHERE k", wanted, " ORDER BY k, n")
            assert tx.fetchall_in("SELECT k FROM t_keys WHERE k", []) == []
        assert [(r["k"], r["n"]) for r in got] == [(k, n) for k in wanted[:-1] for n in (1, 2)]
        with store.transaction() as tx:
            tx.execute_in("DELETE FROM t_keys WHERE k", wanted)
            left = [r[0] for r in tx.rows("SELECT DISTINCT k FROM t_keys ORDER BY k")]
        assert left == [f"k{i:05d}" for i in range(1, count, 2)]
    finally:
        store.close()
