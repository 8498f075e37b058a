"""The view store's transactions on both backends."""

from __future__ import annotations

import threading

import pytest

from events.settings import Settings
from projections.store import build_view_store


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
    """Sessions on the test database (PostgreSQL), this query's own left out."""
    import psycopg

    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])
