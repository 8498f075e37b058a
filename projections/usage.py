"""Usage and feature adoption: per customer-day rollups, distinct users, per-feature counts.

The users of a customer-day are stored with the day, as one JSON array of user digests (in the
order they were first counted), not one row each: a rebuild writes ~10x fewer rows. Readers see
them as before, one row per (customer_id, day, user_hash), through the view ``USERS``. On
PostgreSQL the array is ``jsonb`` (stored parsed: the view expands it without parsing text on
every read); on SQLite it is JSON text.

Each customer-day also carries its users and its features as bit sets (``user_bits``,
``feature_bits``: little-endian bytes of an integer): a customer's users are numbered in the
order the log first counted them (``USER_BITS``, one JSON array per customer: a user's bit is
its position), features book-wide the same way (``FEATURE_BITS``). Distinct users or features
over any span of days are then the OR of the days' bit sets, one row per customer-day read
instead of one per user or feature (the health model's windows, :mod:`health_inputs_query`).
The numbering follows the log's order only, so a rebuild numbers exactly as incremental folding did.
"""

from __future__ import annotations

import json

from collections.abc import Sequence
from datetime import date, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from events.signals import UsageDay
from projections.base import Projection
from projections.store import Tx, ViewStore

# _v3: users became jsonb on PostgreSQL; _v4: user and feature bit sets per day (an existing
# deployment folds the new tables from the log).
DAYS = "cs_usage_days_v4"
USERS = "cs_usage_users_v4"  # a view: one row per (customer_id, day, user_hash) of DAYS.users
FEATURES = "cs_feature_usage_v4"
USER_BITS = "cs_usage_user_bits_v4"  # customer_id -> JSON array of its users: a user's bit is its position
FEATURE_BITS = "cs_usage_feature_bits_v4"  # feature -> its bit, book-wide
NO_USERS = "[]"
NO_BITS = b""

# The user digests of a day, one row each (unmatched days have none). A user is counted once a
# day (the import sends only users not yet seen that day), so the rows are unique as before.
USERS_VIEW = {
    "postgres": f"""CREATE OR REPLACE VIEW {USERS} AS SELECT d.customer_id, d.day, u.user_hash FROM {DAYS} d
        CROSS JOIN LATERAL jsonb_array_elements_text(d.users) AS u(user_hash) WHERE d.customer_id IS NOT NULL""",
    "sqlite": f"""CREATE VIEW IF NOT EXISTS {USERS} AS SELECT d.customer_id AS customer_id, d.day AS day,
        u.value AS user_hash FROM {DAYS} d, json_each(d.users) u WHERE d.customer_id IS NOT NULL""",
}


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder (json.dumps with options builds one per call)


def users_json(users: Sequence[str]) -> str:
    return _COMPACT.encode(list(users))


def stored_users(value: Any) -> list[str]:
    """A day's users as read back: a list already on PostgreSQL (jsonb), JSON text on SQLite."""
    return value if isinstance(value, list) else json.loads(value)


# A stored bit set (little-endian bytes, empty for none) as an integer; a C call, no Python frame
# (the whole-book scoring converts every customer-day's bit sets).
bits_of = partial(int.from_bytes, byteorder="little")


def bits_bytes(bits: int) -> bytes:
    return bits.to_bytes((bits.bit_length() + 7) // 8, "little")


class BitNumbers:
    """The bits of users (per customer) and features (book-wide) inside one write transaction:
    the numbering read for the customers a batch touches, extended in log order (users in an
    event's order, features by name), the new numbers written back by :meth:`write`."""

    def __init__(self, tx: Tx, customers: Sequence[str]) -> None:
        self.users: dict[str, dict[str, int]] = {}
        self.changed: set[str] = set()
        wanted = sorted(set(customers))
        for start in range(0, len(wanted), ROWS_PER_STATEMENT):
            part = wanted[start : start + ROWS_PER_STATEMENT]
            for row in tx.fetchall(f"SELECT customer_id, users FROM {USER_BITS} WHERE customer_id IN "
                                   f"({', '.join('?' * len(part))})", part):  # fmt: skip
                self.users[row["customer_id"]] = {u: n for n, u in enumerate(json.loads(row["users"]))}
        self.features = {r["feature"]: int(r["bit"]) for r in tx.fetchall(f"SELECT feature, bit FROM {FEATURE_BITS}")}
        self.new_features: list[tuple[str, int]] = []

    def user_bits(self, customer_id: str, users: Sequence[str]) -> int:
        numbers = self.users.setdefault(customer_id, {})
        bits = 0
        for user in users:
            n = numbers.get(user)
            if n is None:
                n = numbers[user] = len(numbers)
                self.changed.add(customer_id)
            bits |= 1 << n
        return bits

    def feature_bits(self, features: Sequence[str]) -> int:
        bits = 0
        for feature in sorted(features):
            n = self.features.get(feature)
            if n is None:
                n = self.features[feature] = len(self.features)
                self.new_features.append((feature, n))
            bits |= 1 << n
        return bits

    def write(self, tx: Tx) -> None:
        rows = [(cid, users_json(list(self.users[cid]))) for cid in sorted(self.changed)]  # dicts keep their order
        tx.insert_many(USER_BITS, ("customer_id", "users"), rows,
                       "ON CONFLICT (customer_id) DO UPDATE SET users = excluded.users")  # fmt: skip
        tx.insert_many(FEATURE_BITS, ("feature", "bit"), self.new_features)
        self.changed.clear()
        self.new_features = []


class UsageProjection(Projection):
    """Rows are keyed by the account key: the customer id, or ``unmatched:<account>``."""

    name = "usage_v4"
    tables = (DAYS, FEATURES, USER_BITS, FEATURE_BITS)

    def schema(self) -> list[str]:
        return self._schema("TEXT", "BLOB")

    def _schema(self, users_type: str, bits_type: str) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {DAYS} (usage_id TEXT PRIMARY KEY, customer_id TEXT, account TEXT NOT NULL,
                day TEXT NOT NULL, events BIGINT NOT NULL, sessions BIGINT NOT NULL, active_users BIGINT NOT NULL,
                users {users_type} NOT NULL, user_bits {bits_type} NOT NULL, feature_bits {bits_type} NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{DAYS}_customer ON {DAYS} (customer_id, day)",
            f"""CREATE TABLE IF NOT EXISTS {FEATURES} (customer_id TEXT NOT NULL, feature TEXT NOT NULL, day TEXT NOT NULL,
                uses BIGINT NOT NULL, PRIMARY KEY (customer_id, feature, day))""",
            # Which features the book has used by a day: one index seek per feature (health adoption).
            f"CREATE INDEX IF NOT EXISTS ix_{FEATURES}_feature ON {FEATURES} (feature, day)",
            f"CREATE TABLE IF NOT EXISTS {USER_BITS} (customer_id TEXT PRIMARY KEY, users TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {FEATURE_BITS} (feature TEXT PRIMARY KEY, bit BIGINT NOT NULL)",
        ]

    def schema_for(self, backend: str) -> list[str]:
        pg = backend == "postgres"
        return [*self._schema("JSONB" if pg else "TEXT", "BYTEA" if pg else "BLOB"), USERS_VIEW[backend]]

    def drop(self, tx: Tx) -> None:
        tx.execute(f"DROP VIEW IF EXISTS {USERS}")
        super().drop(tx)

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        uid = str(event.originator_id)
        if isinstance(event, UsageDay.Opened):
            tx.insert(DAYS, DAY_COLUMNS, (uid, event.customer_id, event.account, event.day, 0, 0, 0, NO_USERS, NO_BITS, NO_BITS))
        elif isinstance(event, UsageDay.Counted):
            # A few statements per event whatever its size (one row read back by the update,
            # multi-row inserts): on PostgreSQL each statement is a round trip.
            row = tx.fetchone(f"UPDATE {DAYS} SET events = events + ?, sessions = sessions + ?, "
                              "active_users = active_users + ? WHERE usage_id = ? RETURNING customer_id, day, users, "
                              "user_bits, feature_bits", (event.events, event.sessions, len(event.users), uid))  # fmt: skip
            assert row is not None, f"usage day {uid} counted before it was opened"
            if row["customer_id"] is None:
                return  # unmatched usage is counted, not broken down
            cid, day = row["customer_id"], row["day"]
            if event.users or event.features:
                numbers = BitNumbers(tx, [cid])
                user_bits = bits_of(row["user_bits"]) | numbers.user_bits(cid, event.users)
                feature_bits = bits_of(row["feature_bits"]) | numbers.feature_bits(list(event.features))
                numbers.write(tx)
                tx.execute(f"UPDATE {DAYS} SET users = ?, user_bits = ?, feature_bits = ? WHERE usage_id = ?",
                           (users_json([*stored_users(row["users"]), *event.users]), bits_bytes(user_bits),
                            bits_bytes(feature_bits), uid))  # fmt: skip
            _insert_rows(tx, f"INSERT INTO {FEATURES} (customer_id, feature, day, uses) VALUES", "(?, ?, ?, ?)",
                         [(cid, feature, day, uses) for feature, uses in sorted(event.features.items())],
                         f" ON CONFLICT (customer_id, feature, day) DO UPDATE SET uses = {FEATURES}.uses + "
                         "excluded.uses")  # fmt: skip

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """The rows ``handle`` writes event by event, in a few statements for the whole batch: days
        opened (with their counts and users), days opened earlier (read back in one query) written
        back with their new totals, and feature uses added up per (customer, feature, day): those of
        days opened in this batch inserted, those of earlier days added to their rows."""
        opened: list[tuple[Any, ...]] = []
        in_batch: dict[str, tuple[str | None, str]] = {}  # days opened so far in this batch
        counted: list[tuple[str, Any, bool]] = []  # (day, event, opened earlier in this batch)
        for event, _ in items:
            if isinstance(event, UsageDay.Opened):
                uid = str(event.originator_id)
                opened.append((uid, event.customer_id, event.account, event.day))
                in_batch[uid] = (event.customer_id, event.day)
            elif isinstance(event, UsageDay.Counted):
                uid = str(event.originator_id)
                counted.append((uid, event, uid in in_batch))
        if not counted:
            tx.insert_many(DAYS, DAY_COLUMNS, [(*o, 0, 0, 0, NO_USERS, NO_BITS, NO_BITS) for o in opened])
            return
        before: dict[str, dict[str, Any]] = {}  # days opened before this batch, as stored
        earlier = sorted({uid for uid, _, here in counted if not here})
        for start in range(0, len(earlier), ROWS_PER_STATEMENT):
            part = earlier[start : start + ROWS_PER_STATEMENT]
            for row in tx.fetchall(f"SELECT {', '.join(DAY_COLUMNS)} FROM {DAYS} WHERE usage_id IN "
                                   f"({', '.join('?' * len(part))})", part):  # fmt: skip
                before[row["usage_id"]] = row
        totals: dict[str, list[int]] = {}
        users: dict[str, list[str]] = {uid: stored_users(row["users"]) for uid, row in before.items()}
        bits = {uid: [bits_of(row["user_bits"]), bits_of(row["feature_bits"])] for uid, row in before.items()}
        numbers = BitNumbers(tx, [c for c, _ in in_batch.values() if c is not None]
                             + [row["customer_id"] for row in before.values() if row["customer_id"] is not None])  # fmt: skip
        new_uses: dict[tuple[str, str, str], int] = {}  # of days opened in this batch: no row yet
        more_uses: dict[tuple[str, str, str], int] = {}  # of days opened earlier: added to their rows
        for uid, event, here in counted:
            if here:
                cid, day = in_batch[uid]
            else:
                assert uid in before, f"usage day {uid} counted before it was opened"
                cid, day = before[uid]["customer_id"], before[uid]["day"]
            total = totals.setdefault(uid, [0, 0, 0])
            total[0] += event.events
            total[1] += event.sessions
            total[2] += len(event.users)
            if cid is None:
                continue  # unmatched usage is counted, not broken down
            users.setdefault(uid, []).extend(event.users)
            day_bits = bits.setdefault(uid, [0, 0])
            day_bits[0] |= numbers.user_bits(cid, event.users)
            day_bits[1] |= numbers.feature_bits(list(event.features))
            uses = new_uses if here else more_uses
            for feature, n in event.features.items():
                uses[(cid, feature, day)] = uses.get((cid, feature, day), 0) + n
        numbers.write(tx)

        def bit_sets(uid: str) -> tuple[bytes, bytes]:
            user_bits, feature_bits = bits.get(uid, (0, 0))
            return bits_bytes(user_bits), bits_bytes(feature_bits)

        # Days opened in this batch are inserted with their counts, users and bit sets; earlier
        # ones are written back whole (their new totals), in one statement.
        tx.insert_many(DAYS, DAY_COLUMNS, [(*o, *totals.pop(o[0], (0, 0, 0)), users_json(users.pop(o[0], ())), *bit_sets(o[0]))
                                           for o in opened])  # fmt: skip
        rows = []
        for uid, (events, sessions, active) in totals.items():
            row = before[uid]
            rows.append((uid, row["customer_id"], row["account"], row["day"], int(row["events"]) + events,
                         int(row["sessions"]) + sessions, int(row["active_users"]) + active, users_json(users[uid]),
                         *bit_sets(uid)))  # fmt: skip
        tx.insert_many(DAYS, DAY_COLUMNS, rows, "ON CONFLICT (usage_id) DO UPDATE SET events = excluded.events, "
                       "sessions = excluded.sessions, active_users = excluded.active_users, users = excluded.users, "
                       "user_bits = excluded.user_bits, feature_bits = excluded.feature_bits")  # fmt: skip
        columns = ("customer_id", "feature", "day", "uses")
        tx.insert_many(FEATURES, columns, [(*key, n) for key, n in new_uses.items()])
        tx.insert_many(FEATURES, columns, [(*key, n) for key, n in more_uses.items()],
                       f"ON CONFLICT (customer_id, feature, day) DO UPDATE SET uses = {FEATURES}.uses + excluded.uses")  # fmt: skip


DAY_COLUMNS = ("usage_id", "customer_id", "account", "day", "events", "sessions", "active_users", "users", "user_bits",
               "feature_bits")
ROWS_PER_STATEMENT = 500  # well under SQLite's 32,766 bound variables per statement


def _insert_rows(tx: Tx, head: str, row: str, rows: list[tuple[Any, ...]], tail: str = "") -> None:
    """``head`` VALUES of many rows in as few statements as possible (then ``tail``, e.g. ON CONFLICT)."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start : start + ROWS_PER_STATEMENT]
        tx.execute(f"{head} {', '.join([row] * len(part))}{tail}", [value for r in part for value in r])


def usage_window(tx: Tx, customer_id: UUID, end: date, days: int) -> dict[str, Any]:
    """Usage in the ``days`` days before ``end`` (exclusive): distinct users, events, sessions, features."""
    start = (end - timedelta(days=days)).isoformat()
    stop = end.isoformat()
    cid = str(customer_id)
    totals = tx.fetchone(f"SELECT COUNT(*) AS active_days, COALESCE(SUM(events), 0) AS events, "
                         f"COALESCE(SUM(sessions), 0) AS sessions FROM {DAYS} "
                         "WHERE customer_id = ? AND day >= ? AND day < ?", (cid, start, stop))  # fmt: skip
    users = tx.fetchone(f"SELECT COUNT(DISTINCT user_hash) AS n FROM {USERS} WHERE customer_id = ? AND day >= ? AND day < ?",
                        (cid, start, stop))  # fmt: skip
    features = tx.fetchall(f"SELECT feature, SUM(uses) AS uses FROM {FEATURES} WHERE customer_id = ? AND day >= ? "
                           "AND day < ? GROUP BY feature ORDER BY feature", (cid, start, stop))  # fmt: skip
    assert totals is not None and users is not None
    return {
        "from": start, "to": stop, "active_days": int(totals["active_days"]), "events": int(totals["events"]),
        "sessions": int(totals["sessions"]), "active_users": int(users["n"]),
        "features": {r["feature"]: int(r["uses"]) for r in features},
    }  # fmt: skip


def has_usage_before(tx: Tx, customer_id: UUID, end: date) -> bool:
    return tx.fetchone(f"SELECT 1 AS x FROM {DAYS} WHERE customer_id = ? AND day < ? LIMIT 1",
                       (str(customer_id), end.isoformat())) is not None  # fmt: skip


def first_use(tx: Tx, customer_id: UUID) -> dict[str, str]:
    rows = tx.fetchall(f"SELECT feature, MIN(day) AS first_day FROM {FEATURES} WHERE customer_id = ? GROUP BY feature",
                       (str(customer_id),))  # fmt: skip
    return {r["feature"]: r["first_day"] for r in rows}


class UsageView:
    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def window(self, customer_id: UUID, end: date, days: int = 30) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            return usage_window(tx, customer_id, end, days)

    def series(self, customer_id: UUID, start: date, end: date) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = tx.fetchall(f"SELECT day, events, sessions, active_users FROM {DAYS} WHERE customer_id = ? "
                               "AND day >= ? AND day < ? ORDER BY day", (str(customer_id), start.isoformat(), end.isoformat()))  # fmt: skip
        return [dict(r) for r in rows]
