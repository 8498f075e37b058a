"""The PostgreSQL application recorder, appending without psycopg's pipeline mode.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry


class UnpipelinedPostgresApplicationRecorder(PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` whose appends never use pipeline mode (see module doc)."""

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
