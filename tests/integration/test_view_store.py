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
