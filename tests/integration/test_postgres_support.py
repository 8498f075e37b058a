"""The throwaway PostgreSQL server of tests/support/postgres.py works end to end over TCP."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import create_database, drop_database, postgres_server

ROWS = 5000


@pytest.mark.postgres
def test_database_lifecycle_with_large_write_over_tcp() -> None:
    rows = [(i, f"payload-{i}-" + "x" * 200) for i in range(ROWS)]
    with postgres_server() as admin_url:
        url = create_database(admin_url)
        with psycopg.connect(url, connect_timeout=10) as conn:
            name = conn.info.dbname
            # inet_server_addr() is NULL on a Unix-socket connection.
            assert conn.execute("SELECT inet_server_addr()").fetchone() != (None,)
            conn.execute("CREATE TABLE item (id integer PRIMARY KEY, body text NOT NULL)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO item (id, body) VALUES (%s, %s)", rows)
            conn.commit()
            assert conn.execute("SELECT id, body FROM item ORDER BY id").fetchall() == rows

        drop_database(admin_url, url)

        with psycopg.connect(admin_url, connect_timeout=10) as admin:
            found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert found is None
