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

The uses of each feature on a customer-day are stored with the day too, as one JSON object
(``features``: feature -> uses, keys sorted; ``jsonb`` on PostgreSQL), not one row per feature:
a customer-day of the default benchmark book uses six features, so a rebuild writes one row where
it wrote seven, and its costliest part was inserting those rows into their primary key. Readers
see them as before, one row per (customer_id, feature, day) with its ``uses``, through the view
``FEATURES``. The first day each feature was used in the book (what the health model's adoption
asks for every feature) is kept beside its bit (``FEATURE_BITS.first_day``), lowered when a late
import brings an earlier day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from typing import Any
from uuid import UUID

import orjson

from events.signals import UsageDay
from projections.base import Projection, uuid_text
from projections.store import Tx, ViewStore

# _v3: users became jsonb on PostgreSQL; _v4: user and feature bit sets per day; _v5: a day's
# feature uses stored with the day, first days beside the feature bits; _v6: the book's days
# (an existing deployment folds the new tables from the log).
DAYS = "cs_usage_days_v6"
USERS = "cs_usage_users_v6"  # a view: one row per (customer_id, day, user_hash) of DAYS.users
FEATURES = "cs_feature_usage_v6"  # a view: one row per (customer_id, feature, day) of DAYS.features, with uses
USER_BITS = "cs_usage_user_bits_v6"  # customer_id -> JSON array of its users: a user's bit is its position
FEATURE_BITS = "cs_usage_feature_bits_v6"  # feature -> its bit and the first day it was used, book-wide
# day -> the features the whole book used that day (the OR of its customers' feature bits): a row
# for every day any account (matched or not) has usage.
BOOK_DAYS = "cs_usage_book_days_v6"
# The book's last usage day (any account) before a day, in one probe of BOOK_DAYS's key.
LAST_DAY_BEFORE = f"SELECT day FROM {BOOK_DAYS} WHERE day < ? ORDER BY day DESC LIMIT 1"
NO_USERS = "[]"
NO_FEATURES = "{}"
NO_BITS = b""

# The user digests of a day, one row each (unmatched days have none). A user is counted once a
# day (the import sends only users not yet seen that day), so the rows are unique as before.
USERS_VIEW = {
    "postgres": f"""CREATE OR REPLACE VIEW {USERS} AS SELECT d.customer_id, d.day, u.user_hash FROM {DAYS} d
        CROSS JOIN LATERAL jsonb_array_elements_text(d.users) AS u(user_hash) WHERE d.customer_id IS NOT NULL""",
    "sqlite": f"""CREATE VIEW IF NOT EXISTS {USERS} AS SELECT d.customer_id AS customer_id, d.day AS day,
        u.value AS user_hash FROM {DAYS} d, json_each(d.users) u WHERE d.customer_id IS NOT NULL""",
}
# The feature uses of a day, one row each (unmatched days have none, as their users).
FEATURES_VIEW = {
    "postgres": f"""CREATE OR REPLACE VIEW {FEATURES} AS SELECT d.customer_id, f.key AS feature, d.day,
        f.value::bigint AS uses FROM {DAYS} d CROSS JOIN LATERAL jsonb_each_text(d.features) AS f(key, value)
        WHERE d.customer_id IS NOT NULL""",
    "sqlite": f"""CREATE VIEW IF NOT EXISTS {FEATURES} AS SELECT d.customer_id AS customer_id, f.key AS feature,
        d.day AS day, f.value AS uses FROM {DAYS} d, json_each(d.features) f WHERE d.customer_id IS NOT NULL""",
}


def users_json(users: Sequence[str]) -> str:
    return orjson.dumps(list(users)).decode()  # compact, text as UTF-8


def stored_users(value: Any) -> list[str]:
    """A day's users as read back: a list already on PostgreSQL (jsonb), JSON text on SQLite."""
    return value if isinstance(value, list) else orjson.loads(value)


def features_json(features: dict[str, int]) -> str:
    """A day's feature uses as stored: keys sorted, so every way of folding writes the same text."""
    return orjson.dumps(features, option=orjson.OPT_SORT_KEYS).decode()


def stored_features(value: Any) -> dict[str, int]:
    """A day's feature uses as read back: a dict already on PostgreSQL (jsonb), JSON text on SQLite."""
    return value if isinstance(value, dict) else orjson.loads(value)


def add_uses(into: dict[str, int], features: dict[str, int]) -> None:
    for feature, n in features.items():
        into[feature] = into.get(feature, 0) + n


# A stored bit set (little-endian bytes, empty for none) as an integer; a C call, no Python frame
# (the whole-book scoring converts every customer-day's bit sets).
bits_of = partial(int.from_bytes, byteorder="little")


def bits_bytes(bits: int) -> bytes:
    return bits.to_bytes((bits.bit_length() + 7) // 8, "little")


@dataclass
class _Numbering:
    """The numbering a :class:`BitNumbers` reads and extends, kept from batch to batch of a pass."""

    users: dict[str, dict[str, int]] = field(default_factory=dict)  # customer -> user -> bit
    features: dict[str, int] = field(default_factory=dict)  # feature -> bit
    first_days: dict[str, str] = field(default_factory=dict)  # feature -> first day used
    features_read: bool = False


class BitNumbers:
    """The bits of users (per customer) and features (book-wide) inside one write transaction:
    the numbering read for the customers a batch touches, extended in log order (users in an
    event's order, features by name), the new numbers written back by :meth:`write`, with each
    feature's first day in the book (lowered by an earlier day).

    Within one pass of the runner (``tx.carry``), the numbering read or extended by a batch is
    kept for the next one: a batch reads only the customers no earlier batch of the pass touched.
    (A rebuild read the numbering of about every customer in every batch: 0.21 s of the benchmark
    book's rebuild in batches of 20,000 events, 0.77 s in batches of 5,000.) A batch extends what
    is kept in place; should it fail, the pass ends and what it kept goes with it."""

    CARRY = "usage.bit_numbers"

    def __init__(self, tx: Tx, customers: Sequence[str]) -> None:
        kept = tx.carry.get(self.CARRY) if tx.carry is not None else None
        if kept is None:
            kept = _Numbering()
            if tx.carry is not None:
                tx.carry[self.CARRY] = kept
        self.users = kept.users
        self.changed: set[str] = set()
        unread = sorted(set(customers) - self.users.keys())
        for row in tx.fetchall_in(f"SELECT customer_id, users FROM {USER_BITS} WHERE customer_id", unread):
            self.users[row["customer_id"]] = {u: n for n, u in enumerate(orjson.loads(row["users"]))}
        for customer_id in unread:
            self.users.setdefault(customer_id, {})  # none yet: read, and kept as such
        self.features, self.first_days = kept.features, kept.first_days
        if not kept.features_read:
            for feature, bit, first_day in tx.rows(f"SELECT feature, bit, first_day FROM {FEATURE_BITS}"):
                self.features[feature], self.first_days[feature] = int(bit), first_day
            kept.features_read = True
        self.new_features: set[str] = set()
        self.earlier: set[str] = set()  # features whose first day moved back

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

    def feature_bits(self, features: Sequence[str], day: str) -> int:
        """The bits of ``features``, used on ``day``."""
        bits = 0
        for feature in sorted(features):
            n = self.features.get(feature)
            if n is None:
                n = self.features[feature] = len(self.features)
                self.first_days[feature] = day
                self.new_features.add(feature)
            elif day < self.first_days[feature]:
                self.first_days[feature] = day
                self.earlier.add(feature)
            bits |= 1 << n
        return bits

    def write(self, tx: Tx) -> None:
        rows = [(cid, users_json(list(self.users[cid]))) for cid in sorted(self.changed)]  # dicts keep their order
        tx.insert_many(USER_BITS, ("customer_id", "users"), rows,
                       "ON CONFLICT (customer_id) DO UPDATE SET users = excluded.users")  # fmt: skip
        columns = ("feature", "bit", "first_day")
        tx.insert_many(FEATURE_BITS, columns, [(f, self.features[f], self.first_days[f]) for f in sorted(self.new_features)])
        tx.insert_many(FEATURE_BITS, columns, [(f, self.features[f], self.first_days[f]) for f in sorted(self.earlier - self.new_features)],
                       "ON CONFLICT (feature) DO UPDATE SET first_day = excluded.first_day")  # fmt: skip
        self.changed.clear()
        self.new_features = set()
        self.earlier = set()


class BookDays:
    """The book's days (:data:`BOOK_DAYS`) inside one write transaction: the rows of the days a
    batch touches read once per pass of the runner (``tx.carry``, as :class:`BitNumbers`), and
    written back where a day is new or its features grew."""

    CARRY = "usage.book_days"

    def __init__(self, tx: Tx, days: Sequence[str]) -> None:
        kept = tx.carry.get(self.CARRY) if tx.carry is not None else None
        if kept is None:
            kept = {}
            if tx.carry is not None:
                tx.carry[self.CARRY] = kept
        self.known: dict[str, int] = kept
        unread = sorted(set(days) - kept.keys())
        for row in tx.fetchall_in(f"SELECT day, feature_bits FROM {BOOK_DAYS} WHERE day", unread):
            kept[row["day"]] = bits_of(row["feature_bits"])

    def write(self, tx: Tx, used: dict[str, int]) -> None:
        """Add ``used`` (day -> feature bits used on it by some customer; 0: usage, no feature)."""
        rows = []
        for day in sorted(used):
            old = self.known.get(day)
            new = used[day] if old is None else old | used[day]
            if new != old:
                self.known[day] = new
                rows.append((day, bits_bytes(new)))
        tx.insert_many(BOOK_DAYS, ("day", "feature_bits"), rows,
                       "ON CONFLICT (day) DO UPDATE SET feature_bits = excluded.feature_bits")  # fmt: skip


class UsageProjection(Projection):
    """Rows are keyed by the account key: the customer id, or ``unmatched:<account>``."""

    name = "usage_v6"
    tables = (DAYS, USER_BITS, FEATURE_BITS, BOOK_DAYS)
    handles = (UsageDay.Event,)

    def schema(self) -> list[str]:
        return self._schema("TEXT", "BLOB")

    def _schema(self, json_type: str, bits_type: str) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {DAYS} (usage_id TEXT PRIMARY KEY, customer_id TEXT, account TEXT NOT NULL,
                day TEXT NOT NULL, events BIGINT NOT NULL, sessions BIGINT NOT NULL, active_users BIGINT NOT NULL,
                users {json_type} NOT NULL, features {json_type} NOT NULL, user_bits {bits_type} NOT NULL,
                feature_bits {bits_type} NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{DAYS}_customer ON {DAYS} (customer_id, day)",
            f"CREATE TABLE IF NOT EXISTS {USER_BITS} (customer_id TEXT PRIMARY KEY, users TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {FEATURE_BITS} (feature TEXT PRIMARY KEY, bit BIGINT NOT NULL, first_day TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {BOOK_DAYS} (day TEXT PRIMARY KEY, feature_bits {bits_type} NOT NULL)",
        ]

    def schema_for(self, backend: str) -> list[str]:
        pg = backend == "postgres"
        return [*self._schema("JSONB" if pg else "TEXT", "BYTEA" if pg else "BLOB"), USERS_VIEW[backend],
                FEATURES_VIEW[backend]]  # fmt: skip

    def drop(self, tx: Tx) -> None:
        tx.execute(f"DROP VIEW IF EXISTS {USERS}")
        tx.execute(f"DROP VIEW IF EXISTS {FEATURES}")
        super().drop(tx)

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        uid = str(event.originator_id)
        if isinstance(event, UsageDay.Opened):
            tx.insert(DAYS, DAY_COLUMNS, (uid, event.customer_id, event.account, event.day, 0, 0, 0, NO_USERS,
                                          NO_FEATURES, NO_BITS, NO_BITS))  # fmt: skip
            BookDays(tx, [event.day]).write(tx, {event.day: 0})
        elif isinstance(event, UsageDay.Counted):
            # A few statements per event whatever its size (one row read back by the update):
            # on PostgreSQL each statement is a round trip.
            row = tx.fetchone(f"UPDATE {DAYS} SET events = events + ?, sessions = sessions + ?, "
                              "active_users = active_users + ? WHERE usage_id = ? RETURNING customer_id, day, users, "
                              "features, user_bits, feature_bits", (event.events, event.sessions, len(event.users), uid))  # fmt: skip
            assert row is not None, f"usage day {uid} counted before it was opened"
            if row["customer_id"] is None:
                return  # unmatched usage is counted, not broken down
            cid, day = row["customer_id"], row["day"]
            if event.users or event.features:
                numbers = BitNumbers(tx, [cid])
                user_bits = bits_of(row["user_bits"]) | numbers.user_bits(cid, event.users)
                feature_bits = bits_of(row["feature_bits"]) | numbers.feature_bits(list(event.features), day)
                numbers.write(tx)
                BookDays(tx, [day]).write(tx, {day: feature_bits})
                features = stored_features(row["features"])
                add_uses(features, event.features)
                tx.execute(f"UPDATE {DAYS} SET users = ?, features = ?, user_bits = ?, feature_bits = ? WHERE usage_id = ?",
                           (users_json([*stored_users(row["users"]), *event.users]), features_json(features),
                            bits_bytes(user_bits), bits_bytes(feature_bits), uid))  # fmt: skip

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """The rows ``handle`` writes event by event, in a few statements for the whole batch: days
        opened (with their counts, users and feature uses) inserted, days opened earlier (read back
        in one query) written back with their new totals."""
        opened: list[tuple[Any, ...]] = []
        in_batch: dict[str, tuple[str | None, str]] = {}  # days opened so far in this batch
        counted: list[tuple[str, Any, bool]] = []  # (day, event, opened earlier in this batch)
        for event, _ in items:
            if isinstance(event, UsageDay.Opened):
                uid = uuid_text(event.originator_id)
                opened.append((uid, event.customer_id, event.account, event.day))
                in_batch[uid] = (event.customer_id, event.day)
            elif isinstance(event, UsageDay.Counted):
                uid = uuid_text(event.originator_id)
                counted.append((uid, event, uid in in_batch))
        book = dict.fromkeys((o[3] for o in opened), 0)  # the book's days this batch touched -> features used on them
        if not counted:
            tx.insert_many(DAYS, DAY_COLUMNS, [(*o, 0, 0, 0, NO_USERS, NO_FEATURES, NO_BITS, NO_BITS) for o in opened])
            BookDays(tx, list(book)).write(tx, book)
            return
        before: dict[str, dict[str, Any]] = {}  # days opened before this batch, as stored
        earlier = sorted({uid for uid, _, here in counted if not here})
        for row in tx.fetchall_in(f"SELECT {', '.join(DAY_COLUMNS)} FROM {DAYS} WHERE usage_id", earlier):
            before[row["usage_id"]] = row
        totals: dict[str, list[int]] = {}
        users: dict[str, list[str]] = {uid: stored_users(row["users"]) for uid, row in before.items()}
        uses: dict[str, dict[str, int]] = {uid: stored_features(row["features"]) for uid, row in before.items()}
        bits = {uid: [bits_of(row["user_bits"]), bits_of(row["feature_bits"])] for uid, row in before.items()}
        numbers = BitNumbers(tx, [c for c, _ in in_batch.values() if c is not None]
                             + [row["customer_id"] for row in before.values() if row["customer_id"] is not None])  # fmt: skip
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
            add_uses(uses.setdefault(uid, {}), event.features)
            day_bits = bits.setdefault(uid, [0, 0])
            day_bits[0] |= numbers.user_bits(cid, event.users)
            day_bits[1] |= numbers.feature_bits(list(event.features), day)
        numbers.write(tx)
        for uid, (_, feature_bits) in bits.items():
            day = in_batch[uid][1] if uid in in_batch else before[uid]["day"]
            book[day] = book.get(day, 0) | feature_bits
        BookDays(tx, list(book)).write(tx, book)

        def stored(uid: str) -> tuple[str, str, bytes, bytes]:
            """The users, feature uses and bit sets of a day counted in this batch, as written."""
            user_bits, feature_bits = bits.get(uid, (0, 0))
            return (users_json(users.get(uid, ())), features_json(uses.get(uid, {})), bits_bytes(user_bits),
                    bits_bytes(feature_bits))  # fmt: skip

        # Days opened in this batch are inserted with their counts, users, feature uses and bit
        # sets; earlier ones are written back whole (their new totals), in one statement.
        tx.insert_many(DAYS, DAY_COLUMNS, [(*o, *totals.pop(o[0], (0, 0, 0)), *stored(o[0])) for o in opened])
        rows = []
        for uid, (events, sessions, active) in totals.items():
            row = before[uid]
            rows.append((uid, row["customer_id"], row["account"], row["day"], int(row["events"]) + events,
                         int(row["sessions"]) + sessions, int(row["active_users"]) + active, *stored(uid)))  # fmt: skip
        tx.insert_many(DAYS, DAY_COLUMNS, rows, "ON CONFLICT (usage_id) DO UPDATE SET events = excluded.events, "
                       "sessions = excluded.sessions, active_users = excluded.active_users, users = excluded.users, "
                       "features = excluded.features, user_bits = excluded.user_bits, "
                       "feature_bits = excluded.feature_bits")  # fmt: skip


DAY_COLUMNS = ("usage_id", "customer_id", "account", "day", "events", "sessions", "active_users", "users", "features",
               "user_bits", "feature_bits")


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
