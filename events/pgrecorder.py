"""The PostgreSQL application recorder: appends without psycopg's pipeline mode, and with the
stored events sent as four binary column arrays.

eventsourcing 9.5's ``PostgresApplicationRecorder.insert_events`` sends the table lock, the
NOTIFY and the INSERT of every stored event (one array parameter) in a psycopg pipeline and
then calls ``Pipeline.sync()``. psycopg 3.3's pipeline loop flushes the output buffer once
after queueing the last command and then waits for results: when the append is larger than
what the socket takes in one write (a few MB on loopback TCP, far less over a Unix socket or
a slow link), the rest of the INSERT stays in libpq's buffer, the server waits for it
(``ClientRead``) and both sides wait for ever. One 50,000-line chunk of a Mixpanel import
(about 4,000 events, 3 MB of stored state) is enough to hit it.

This recorder runs the same statements in one transaction (lock, notify, insert ...
returning notification ids, commit) as one ordinary query (below), whose send loop flushes
until everything is written. Atomicity and commit order are unchanged.

The INSERT itself is the library's ``INSERT ... SELECT ... FROM unnest(...) RETURNING
notification_id`` with one array per column (``uuid[]``/``text[]``, ``int8[]``, ``text[]``,
``bytea[]``) in binary format instead of one array of the ``stored_event_*`` composite type in
text format: psycopg dumps a composite array as text, hex-encoding and then regex-escaping
every state (a 300,000-event Mixpanel import: 10.2 s of the importing process's CPU with the
composite array, 8.0 s with the column arrays). ``unnest`` of several arrays yields their
elements in order, as the composite array did, so the rows, their notification ids (from the
table's sequence, under the same EXCLUSIVE lock) and the returned order are the same.

The lock, the notification and the insert are one call of a PL/pgSQL function created with
the table (``<events table>_append``): ``SELECT * FROM f(ids, versions, topics, states,
lock_timeout)`` on the pool's autocommit connection, a single statement and so its own
transaction, committed before the answer comes back. Inside it: ``SET LOCAL lock_timeout``
(``set_config(..., true)``), ``LOCK TABLE ... IN EXCLUSIVE MODE``, ``NOTIFY``, and the
``INSERT ... RETURNING notification_id``, in the order the statements ran before, and the
lock is held until that transaction commits, as before. One round trip per append instead
of six (BEGIN, SET LOCAL, LOCK, NOTIFY, INSERT, COMMIT): a group of webhook deliveries spent
more time waiting for those answers than building its events. A unique violation (a version
conflict) fails the statement, so nothing of the append is stored. The function is
(re)created by ``create_table`` (run at every start, ``CREATE_TABLE=y``), under a
transaction-level advisory lock so that processes starting together do not replace it at
the same time.

A large append (at least ``COPY_FROM`` events: a chunk of a Mixpanel import, about 4,000
events and 3 MB of state per 50,000 lines) goes through ``COPY ... FROM STDIN (FORMAT
BINARY)`` instead, in one transaction on the same connection: ``SET LOCAL lock_timeout``,
``LOCK TABLE ... IN EXCLUSIVE MODE`` and ``NOTIFY`` (one message, as above), the COPY of the
four columns, then ``currval`` of the table's ``notification_id`` sequence, then COMMIT. The
rows take their ids from the same column default (``nextval``) in the order they are copied,
and under the EXCLUSIVE lock nothing else inserts meanwhile, so they are the ``n`` ids ending
at ``currval``, consecutive, as the INSERT returned them. A unique violation (a version
conflict) fails the COPY and the transaction is rolled back: nothing of the append is stored.
Measured on the 20 appends of a 1,000,000-event import (77,484 events, 60 MB of state,
replayed on a fresh table): PostgreSQL's CPU 1.2-1.7 s through the function, 0.84-0.94 s by
COPY (the server parses no ``bytea[]`` array, unnests nothing, and keeps no result set of
ids), the importing process's 0.27-0.36 s against 0.20-0.24 s. Below ``COPY_FROM`` events the
five round trips would cost more than they save: webhook deliveries and single commands keep
the function.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier, Literal

COPY_FROM = 1000  # events in one append from which COPY is used (see module doc)


class UnpipelinedPostgresApplicationRecorder(PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` whose appends never use pipeline mode, send their stored
    events as binary column arrays and take one round trip (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schema, table = Identifier(self.datastore.schema), Identifier(self.events_table_name)
        self.append_function_name = f"{self.events_table_name}_append"
        self.check_identifier_length(self.append_function_name)
        function = Identifier(self.datastore.schema, self.append_function_name)
        # What every append does before its rows go in, on both paths (the function and COPY).
        lock_and_notify = SQL("LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; NOTIFY {channel};").format(
            schema=schema, table=table, channel=Identifier(self.channel_name))
        self.sql_create_statements.append(SQL(
            "CREATE OR REPLACE FUNCTION {function}(p_ids {id_type}[], p_versions bigint[], p_topics text[],"
            " p_states bytea[], p_lock_timeout text) RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$"
            " BEGIN"
            " PERFORM set_config('lock_timeout', p_lock_timeout, true);"
            " {lock_and_notify}"
            " RETURN QUERY INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(p_ids, p_versions, p_topics, p_states) RETURNING t.notification_id;"
            " END;"
            " $BODY$"
        ).format(function=function, id_type=SQL(self.datastore.originator_id_type), schema=schema, table=table,
                 lock_and_notify=lock_and_notify))  # fmt: skip
        self.append_statement = SQL(
            "SELECT * FROM {function}(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[], %s)"
        ).format(function=function, id_type=SQL(self.datastore.originator_id_type))
        self.append_lock_timeout = f"{self.datastore.lock_timeout}s"
        self.copy_prologue = SQL("SELECT set_config('lock_timeout', {timeout}, true); {lock_and_notify}").format(
            timeout=Literal(self.append_lock_timeout), lock_and_notify=lock_and_notify)
        self.copy_statement = SQL(
            "COPY {schema}.{table} (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, table=table)
        self.copy_types = [self.datastore.originator_id_type, "int8", "text", "bytea"]
        self.last_id_statement = SQL("SELECT currval(pg_get_serial_sequence({table}, 'notification_id')) AS last").format(
            table=Literal(Identifier(self.datastore.schema, self.events_table_name).as_string()))
        self.create_lock_key = zlib.crc32(f"cs-create-table:{self.datastore.schema}.{self.events_table_name}".encode())

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        # Processes starting together (compose.yaml's server and worker) would otherwise replace
        # the functions at the same moment ("tuple concurrently updated").
        curs.execute("SELECT pg_advisory_xact_lock(%s)", (self.create_lock_key,), prepare=False)
        super()._create_table(curs)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if self.datastore.enable_db_functions:  # one statement, no pipeline: the library's path is fine
            return super().insert_events(stored_events, **kwargs)
        if not stored_events:
            return None
        if len(stored_events) >= COPY_FROM:
            return self._copy_events(stored_events)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            assert conn.autocommit  # the statement is its own transaction
            curs.execute(self.append_statement, (
                [e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
                [e.topic for e in stored_events], [e.state for e in stored_events], self.append_lock_timeout,
            ), prepare=True)  # fmt: skip
            return [row[self.append_function_name] for row in curs.fetchall()]

    def _copy_events(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        """A large append by COPY, in one transaction (see module doc); the notification ids in order."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.copy_prologue, prepare=False)  # three statements, no parameters: one round trip
            with curs.copy(self.copy_statement) as copy:
                copy.set_types(self.copy_types)
                write_row = copy.write_row
                for e in stored_events:
                    write_row((e.originator_id, e.originator_version, e.topic, e.state))
            curs.execute(self.last_id_statement, prepare=False)
            row = curs.fetchone()
            assert row is not None
            last: int = row["last"]
        return list(range(last - len(stored_events) + 1, last + 1))
