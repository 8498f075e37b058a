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

This recorder runs the same statements in the same single transaction (lock, notify,
insert ... returning notification ids, commit) as ordinary queries, whose send loop flushes
until everything is written. Atomicity and commit order are unchanged; it costs a few more
round trips per append (BEGIN, SET LOCAL, LOCK, NOTIFY, INSERT, COMMIT instead of one batch).

The INSERT itself is the library's ``INSERT ... SELECT ... FROM unnest(...) RETURNING
notification_id`` with one array per column (``uuid[]``/``text[]``, ``int8[]``, ``text[]``,
``bytea[]``) in binary format instead of one array of the ``stored_event_*`` composite type in
text format: psycopg dumps a composite array as text, hex-encoding and then regex-escaping
every state (a 300,000-event Mixpanel import: 10.2 s of the importing process's CPU with the
composite array, 8.0 s with the column arrays). ``unnest`` of several arrays yields their
elements in order, as the composite array did, so the rows, their notification ids (from the
table's sequence, under the same EXCLUSIVE lock) and the returned order are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier


class UnpipelinedPostgresApplicationRecorder(PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` whose appends never use pipeline mode and send their
    stored events as binary column arrays (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_columns_statement = SQL(
            "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
            " RETURNING notification_id"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name),
                 id_type=SQL(self.datastore.originator_id_type))  # fmt: skip

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if self.datastore.enable_db_functions:  # one statement, no pipeline: the library's path is fine
            return super().insert_events(stored_events, **kwargs)
        notification_ids: Sequence[int] | None = None
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._insert_events(curs, stored_events, **kwargs)
            if stored_events:
                self._insert_stored_events(curs, stored_events, **kwargs)  # lock, notify, insert
                notification_ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        return notification_ids

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any) -> None:
        if self.datastore.enable_db_functions:
            super()._insert_stored_events(curs, stored_events)
            return
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(self.insert_columns_statement, (
            [e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
            [e.topic for e in stored_events], [e.state for e in stored_events],
        ))  # fmt: skip
