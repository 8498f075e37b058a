"""Gathering the health model's inputs for many customers as of one instant, in a few bulk
queries (one per signal), so scoring the whole book costs about as much as scoring one.

Every query reads only rows stamped before the instant ``as_of`` (usage by whole UTC days
before its date), so the inputs are a function of the events that occurred before it.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property, reduce
from operator import itemgetter, or_
from typing import Any
from uuid import UUID

from events.ingest import SESSION_EVENTS
from events.scorecard import ScorecardConfig
from projections.base import counted, utc_iso
from projections.feedback import EMAILS, SURVEYS
from projections.health_inputs import CONTRACTS, OVERRIDES, SCORECARDS, TICKET_STATES
from projections.store import Tx
from projections.usage import BOOK_DAYS, DAYS, FEATURE_BITS, LAST_DAY_BEFORE, bits_of

USAGE_WINDOW_DAYS = 30  # the usage and adoption windows (and the previous window of the usage trend)
SESSION_LIKE = SESSION_EVENTS  # counted as sessions on import, never as features
OWN_EVENT_PREFIX = "$"  # Mixpanel's own (automatic, reserved) event names start with it
# What key_features_source says when the scorecard names no key features (see default_key_features).
DEFAULT_KEY_FEATURES = "every feature the book used in the 90 days before as_of except Mixpanel's own $ events"
# A feature nobody in the book used for this long is retired or renamed (the product changed):
# it is no default key feature, or every customer would be marked down for not using it.
KEY_FEATURE_LOOKBACK_DAYS = 90


def default_key_features(features: Iterable[str]) -> set[str]:
    """The key features when the scorecard names none, of ``features`` (those the book used lately,
    :func:`used_lately`): all but session events and Mixpanel's own events, whose names start
    with ``$`` (automatic page views ``$mp_web_page_view``,
    autocapture clicks ``$mp_click``, identity merges ``$identify``, mobile lifecycle ``$ae_*``).
    Those are activity, not product features: they still count as events and make users active,
    but a customer is not marked down for not "adopting" them. A scorecard that names one makes it key."""
    return {f for f in features if f not in SESSION_LIKE and not f.startswith(OWN_EVENT_PREFIX)}


@dataclass
class Inputs:
    """Everything known about one customer before ``as_of``."""

    customer_id: str
    contract: dict[str, Any]
    arr_180d_max: float | None = None
    renewal_extended: bool = False
    first_usage_day: str | None = None
    last_usage_day: str | None = None  # the last day with usage before as_of's date, if within the days read
    active_users_30d: int = 0
    active_users_prev_30d: int = 0
    active_days_30d: int = 0
    events_30d: int = 0
    features_30d: set[str] = field(default_factory=set)
    tickets: list[dict[str, Any]] = field(default_factory=list)  # latest state of each ticket
    csat_90d: list[float] = field(default_factory=list)
    surveys: list[tuple[str, int]] = field(default_factory=list)  # (responded_at, score), oldest first
    email_kinds: dict[str, tuple[int, str]] = field(default_factory=dict)  # kind -> (count, last at)
    emails_sent: int = 0  # distinct messages with a processed or delivered event (one message has both)
    override: dict[str, Any] | None = None


@dataclass
class BookInputs:
    as_of: datetime
    scorecard: ScorecardConfig
    scorecard_at: str | None
    book_features: set[str]
    support_connected: bool
    customers: dict[str, Inputs]
    usage_through: str | None = None  # the book's last day with usage (any account) before as_of's date
    usage_end: date | None = None  # the usage windows' end (exclusive): see usage_window_end

    @cached_property  # (set once gather_at has read usage_through; asked for every customer)
    def usage_lag_days(self) -> int:
        """Whole days just before as_of's date with no usage for anyone in the book (0: current)."""
        return 0 if self.usage_through is None else lag_days(self.as_of.date(), self.usage_through)

    @property
    def usage_stale(self) -> bool:
        """No usage for anyone in the book in the whole window before as_of: the data stopped."""
        return self.usage_lag_days >= USAGE_WINDOW_DAYS


def lag_days(stop: date, through: str) -> int:
    """Whole days before ``stop`` after the book's last usage day ``through`` (0: the day before)."""
    return (stop - date.fromisoformat(through)).days - 1


def usage_lag_note(tx: Tx, stop: date, what: str) -> str | None:
    """For a usage report whose window ends at ``stop`` (exclusive): where the book's usage data
    ends when no account has usage on the days just before it (None: current). ``what``: what
    such missing days may pass for in the report."""
    row = tx.fetchone(LAST_DAY_BEFORE, (stop.isoformat(),))
    if row is None:
        return None  # no usage at all: the reports say so on their own
    lag = lag_days(stop, row["day"])
    if not lag:
        return None
    return (f"the book's usage data ends {row['day']}, {counted(lag, 'day')} before {stop.isoformat()}: no "
            f"account has usage recorded since, so {what} may be missing data rather than customers; is the Mixpanel "
            "sync or import current? (get_sync_status)")  # fmt: skip


def usage_window_end(as_of_day: date, through: str | None) -> date:
    """Where the usage windows end (exclusive): as_of's date, or, when no account of the book has
    usage on the days just before it, the day after the book's last usage day (``through``).

    Days on which nobody in the whole book used the product are where the usage data stops (a
    Mixpanel sync that has not run, a file not imported yet), not 1,000 customers stopping at once:
    counting them as unused days would mark every customer down together. So the 30-day windows are
    the 30 days of data up to there, and the reasons say where the data ends. Computed from usage
    days before as_of's date only, so a score stays a function of the events before it.

    When the data stopped a whole window or more before as_of, the windows stay where they are:
    usage that old is not scored at all (``BookInputs.usage_stale``)."""
    if through is None:
        return as_of_day
    end = date.fromisoformat(through) + timedelta(days=1)
    return end if as_of_day - timedelta(days=USAGE_WINDOW_DAYS) < end < as_of_day else as_of_day


# Customer-days in a span of days (the usage windows), in table order (see gather_at).
DAY_ROWS = f"SELECT customer_id, day, events, user_bits, feature_bits FROM {DAYS} WHERE day >= ? AND day < ?"


def _in(ids: list[str] | None, column: str = "customer_id") -> tuple[str, list[Any]]:
    if ids is None:
        return f" AND {column} IS NOT NULL", []
    return f" AND {column} IN ({', '.join('?' * len(ids))})", list(ids)


def scorecard_as_of(tx: Tx, as_of: datetime) -> tuple[ScorecardConfig, str | None]:
    return scorecards_at(tx, [utc_iso(as_of)])[0]


SCORECARDS_BEFORE = f"SELECT at, config FROM {SCORECARDS} WHERE at < ? ORDER BY position"


def scorecards_at(tx: Tx, stamps: Sequence[str]) -> list[tuple[ScorecardConfig, str | None]]:
    """The scorecard in force at each instant (its ISO stamp): the last one recorded before it."""
    return _scorecards_in(tx.fetchall(SCORECARDS_BEFORE, [max(stamps)]), stamps)


def _scorecards_in(rows: list[dict[str, Any]], stamps: Sequence[str]) -> list[tuple[ScorecardConfig, str | None]]:
    """:func:`scorecards_at` from the rows of ``SCORECARDS_BEFORE`` the latest stamp."""
    parsed: dict[int, ScorecardConfig] = {}
    out: list[tuple[ScorecardConfig, str | None]] = []
    for t in stamps:
        n = max((k for k, row in enumerate(rows) if row["at"] < t), default=None)
        if n is None:
            out.append((ScorecardConfig(), None))
            continue
        if n not in parsed:
            parsed[n] = ScorecardConfig.model_validate(json.loads(rows[n]["config"]))
        out.append((parsed[n], rows[n]["at"]))
    return out


def gather(tx: Tx, as_of: datetime, customer_ids: list[UUID] | None = None) -> BookInputs:
    """The inputs of the given customers (all registered before ``as_of`` by default)."""
    return gather_at(tx, [as_of], customer_ids)[0]


def gather_at(tx: Tx, instants: Sequence[datetime], customer_ids: list[UUID] | None = None) -> list[BookInputs]:
    """:func:`gather` at several instants in one pass: each statement reads the rows before the
    latest instant once, and each instant keeps those before it (conditional aggregates per
    instant where the database sums), so a score and its 30-day trend cost one set of queries.
    The statements do not depend on one another, so they are sent together
    (:meth:`~projections.store.Tx.read_all`: one round trip on PostgreSQL).
    Element ``i`` equals ``gather(tx, instants[i], ...)`` (a test compares them)."""
    if not instants:
        return []
    ts = [utc_iso(a) for a in instants]
    ids = [str(c) for c in customer_ids] if customer_ids is not None else None
    if ids == []:
        return [BookInputs(as_of, *card, set(), False, {}) for as_of, card in zip(instants, scorecards_at(tx, ts), strict=True)]
    # The whole book: no list of ids (a book of tens of thousands would overflow a statement's
    # parameters). Rows of customers not registered at an instant are skipped for it below.
    where, params = _in(ids)
    stops = [as_of.date().isoformat() for as_of in instants]
    d60s = [(as_of.date() - timedelta(days=2 * USAGE_WINDOW_DAYS)).isoformat() for as_of in instants]
    csat_froms = [utc_iso(as_of - timedelta(days=90)) for as_of in instants]
    t_max, stop_max = max(ts), max(stops)
    lookback_from = (min(instants).date() - timedelta(days=USAGE_WINDOW_DAYS + KEY_FEATURE_LOOKBACK_DAYS)).isoformat()

    def per_instant(template: str, bounds: Sequence[Sequence[str]]) -> tuple[str, list[str]]:
        """One aggregate column per instant (``template`` names it with ``{n}``, binds ``bounds[n]``)."""
        return ", ".join(template.format(n=n) for n in range(len(instants))), [b for bs in bounds for b in bs]

    connected_cols, connected_binds = per_instant(f"(SELECT 1 FROM {TICKET_STATES} WHERE at < ? LIMIT 1) AS connected_{{n}}",
                                                  [(t,) for t in ts])  # fmt: skip
    email_cols, email_binds = per_instant("COUNT(CASE WHEN occurred_at < ? THEN 1 END) AS n_{n}, "
                                          "MAX(CASE WHEN occurred_at < ? THEN occurred_at END) AS last_{n}", [(t, t) for t in ts])  # fmt: skip
    # A message sent is one however many of its events arrive (SendGrid posts processed, then delivered).
    sent_cols, sent_binds = per_instant("COUNT(DISTINCT CASE WHEN occurred_at < ? THEN COALESCE(message_id, email_event_id) "
                                        "END) AS sent_{n}", [(t,) for t in ts])  # fmt: skip
    # The book's last usage day before each instant's date (any account, matched or not), one probe
    # of the book's days' key each: where the data stops (see usage_window_end).
    through_cols, through_binds = per_instant(f"({LAST_DAY_BEFORE}) AS through_{{n}}", [(stop,) for stop in stops])
    statements: dict[str, tuple[str, list[Any]]] = {
        "cards": (SCORECARDS_BEFORE, [t_max]),
        "usage_through": (f"SELECT {through_cols}", through_binds),
        # The book's days as far back as a key-feature lookback from a window moved back goes.
        "book_days": (BOOK_DAY_ROWS, [lookback_from, stop_max]),
        "contracts": (f"SELECT * FROM {CONTRACTS} WHERE 1 = 1{where} ORDER BY customer_id, position", params),
        "usage_firsts": (f"SELECT customer_id, MIN(day) FROM {DAYS} WHERE day < ?{where} GROUP BY customer_id", [stop_max, *params]),
        "features": (FEATURES_WITH_FIRST_DAY, []),
        # In table order (a scan; ordering by the index would visit the table row by row), then
        # each customer's days sorted by day.
        "usage_days": (f"{DAY_ROWS}{where}", [min(d60s), stop_max, *params]),
        "connected": (f"SELECT {connected_cols}", connected_binds),
        "tickets": (f"SELECT * FROM {TICKET_STATES} WHERE at < ?{where} ORDER BY position", [t_max, *params]),
        "surveys": (f"SELECT customer_id, score, responded_at FROM {SURVEYS} WHERE responded_at < ?{where} "
                    "ORDER BY responded_at, survey_id", [t_max, *params]),
        "emails": (f"SELECT customer_id, kind, {email_cols} FROM {EMAILS} WHERE occurred_at < ?{where} GROUP BY customer_id, kind",
                   [*email_binds, t_max, *params]),
        "sent": (f"SELECT customer_id, {sent_cols} FROM {EMAILS} WHERE kind IN ('processed', 'delivered') "
                 f"AND occurred_at < ?{where} GROUP BY customer_id", [*sent_binds, t_max, *params]),
        "overrides": (f"SELECT * FROM {OVERRIDES} WHERE kind = 'health' AND at < ?{where} ORDER BY position", [t_max, *params]),
    }  # fmt: skip
    read = dict(zip(statements, tx.read_all(list(statements.values())), strict=True))

    cards = _scorecards_in(read["cards"].dicts(), ts)
    logged: dict[str, list[dict[str, Any]]] = {}
    for row in read["contracts"].dicts():
        logged.setdefault(row["customer_id"], []).append(row)
    timelines = {cid: (log_rows[0]["at"], contract_timeline(log_rows)) for cid, log_rows in logged.items()}
    books = [BookInputs(as_of, *cards[n], set(), False, _registered(timelines, as_of, ts[n])) for n, as_of in enumerate(instants)]
    if not any(book.customers for book in books):
        return books

    features = read["features"].rows
    through = read["usage_through"].rows[0]
    for n, book in enumerate(books):
        book.usage_through, book.usage_end = through[n], usage_window_end(book.as_of.date(), through[n])
    day_rows = read["usage_days"].rows
    earliest = min(usage_end - timedelta(days=2 * USAGE_WINDOW_DAYS) for book in books if (usage_end := book.usage_end)).isoformat()
    if earliest < min(d60s):  # windows moved back to where the data stops: the days before those read
        day_rows = [*tx.rows(f"{DAY_ROWS}{where}", [earliest, min(d60s), *params]), *day_rows]
    _gather_usage(books, read["usage_firsts"].rows, [(feature, bit) for feature, bit, *_ in features], day_rows, stops)
    names = {int(bit): feature for feature, bit, *_ in features}
    book_days = read["book_days"].rows
    for book in books:
        if book.customers and book.usage_end:  # (an instant before the first registration keeps the empty defaults)
            book.book_features = default_key_features(used_lately(book_days, names, book.usage_end))

    connected = (read["connected"].dicts() or [{}])[0]
    tickets, surveys, emails, sent, overrides = (read[k].dicts() for k in ("tickets", "surveys", "emails", "sent", "overrides"))
    for n, book in enumerate(books):
        t, customers = ts[n], book.customers
        if not customers:
            continue
        book.support_connected = bool(connected.get(f"connected_{n}"))
        latest: dict[str, dict[str, Any]] = {}
        for row in tickets:
            if row["at"] >= t or row["customer_id"] not in customers:
                continue
            previous = latest.get(row["ticket_id"])
            if row["csat"] is not None and row["at"] >= csat_froms[n] and (previous is None or previous["csat"] != row["csat"]):
                customers[row["customer_id"]].csat_90d.append(float(row["csat"]))
            latest[row["ticket_id"]] = row
        for row in latest.values():
            customers[row["customer_id"]].tickets.append(row)
        for row in surveys:
            if row["responded_at"] < t and row["customer_id"] in customers:
                customers[row["customer_id"]].surveys.append((row["responded_at"], int(row["score"])))
        for row in emails:
            if row[f"n_{n}"] and row["customer_id"] in customers:
                customers[row["customer_id"]].email_kinds[row["kind"]] = (int(row[f"n_{n}"]), row[f"last_{n}"])
        for row in sent:
            if row[f"sent_{n}"] and row["customer_id"] in customers:
                customers[row["customer_id"]].emails_sent = int(row[f"sent_{n}"])
        for row in overrides:
            if row["at"] < t and row["customer_id"] in customers:
                customers[row["customer_id"]].override = row if row["expires_at"] > t else None
    return books


def _gather_usage(books: list[BookInputs], firsts: list[tuple[Any, ...]], bit_rows: list[tuple[Any, ...]],
                  day_rows: list[tuple[Any, ...]], stops: list[str]) -> None:  # fmt: skip
    """The usage inputs at every instant (``stops[n]``: its date; the windows are the 30 and the 60
    days before ``book.usage_end``): each customer's first usage day (``firsts``), and its
    customer-days (``day_rows``) from the earliest previous window's start to the latest instant,
    read once for every instant.
    A window's active days and events are its rows; its distinct users and features, the OR of its
    days' bit sets (:mod:`projections.usage`; ``bit_rows`` name the feature bits): one row per
    customer-day read instead of one per user or feature."""
    if not firsts:
        return
    names = {int(bit): feature for feature, bit in bit_rows}
    rows_of: dict[str, list[tuple[Any, ...]]] = {}
    for row in day_rows:
        rows_of.setdefault(row[0], []).append(row)
    days_of: dict[str, tuple[list[str], list[int], list[int], list[int]]] = {}
    for cid, rows in rows_of.items():
        rows.sort(key=itemgetter(1))
        _, days, events, user_bits, feature_bits = zip(*rows, strict=True)
        days_of[cid] = (list(days), list(events), list(map(bits_of, user_bits)), list(map(bits_of, feature_bits)))
    feature_sets: dict[int, frozenset[str]] = {}
    window_ends = [book.usage_end or book.as_of.date() for book in books]
    ends = [end.isoformat() for end in window_ends]
    d30s = [(end - timedelta(days=USAGE_WINDOW_DAYS)).isoformat() for end in window_ends]
    d60s = [(end - timedelta(days=2 * USAGE_WINDOW_DAYS)).isoformat() for end in window_ends]
    for cid, first in firsts:
        window = days_of.get(cid)
        for n, book in enumerate(books):
            inputs = book.customers.get(cid)
            if inputs is None or first >= stops[n]:
                continue
            inputs.first_usage_day = first
            if window is None:
                continue
            days, events, user_bits, feature_bits = window
            old, start, stop = bisect_left(days, d60s[n]), bisect_left(days, d30s[n]), bisect_left(days, ends[n])
            inputs.active_days_30d, inputs.events_30d = stop - start, sum(events[start:stop])
            inputs.last_usage_day = days[stop - 1] if stop else None
            inputs.active_users_30d = reduce(or_, user_bits[start:stop], 0).bit_count()
            inputs.active_users_prev_30d = reduce(or_, user_bits[old:start], 0).bit_count()
            used = reduce(or_, feature_bits[start:stop], 0)
            if used not in feature_sets:
                feature_sets[used] = frozenset(names[bit] for bit in range(used.bit_length()) if used >> bit & 1)
            inputs.features_30d = set(feature_sets[used])


def _registered(timelines: dict[str, tuple[str, list[dict[str, Any]]]], as_of: datetime, t: str) -> dict[str, Inputs]:
    """The customers registered before ``as_of`` (``t`` its stamp), with their contract state then
    (``timelines``: customer -> when it was registered, :func:`contract_timeline`)."""
    customers: dict[str, Inputs] = {}
    window_start = utc_iso(as_of - timedelta(days=180))
    for cid, (registered_at, timeline) in timelines.items():
        if registered_at >= t:
            continue  # registered at or after as_of
        rows = [r for r in timeline if r["at"] < t]
        inputs = Inputs(cid, rows[-1])
        recent = [r["arr"] for r in rows if r["at"] >= window_start and r["arr"] is not None]
        before = [r for r in rows if r["at"] < window_start]
        if before and before[-1]["arr"] is not None:
            recent.append(before[-1]["arr"])  # the ARR in force when the window opened
        inputs.arr_180d_max = max(recent) if recent else None
        # A renewal signal: the renewal date in force now is later than the one in force when
        # the 180-day window opened (or, for a newer customer, than the first one it had).
        start_renewal = (before[-1] if before else rows[0])["renewal_date"]
        now_renewal = rows[-1]["renewal_date"]
        inputs.renewal_extended = bool(start_renewal and now_renewal and now_renewal > start_renewal)
        customers[cid] = inputs
    return customers


STATE_COLUMNS = ("registered_at", "arr", "seats", "contract_start", "renewal_date", "churned_on", "tier")


def contract_timeline(log_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One customer's contract states in the order their events *occurred*.

    Each stored row is the state after its event in log order, so an event recorded after
    others but dated before them (a churn imported with its date, after a contract change)
    would carry the later change into the past. Its own change is what differs from the row
    before it in the log; those changes are re-applied here ordered by (occurred_at, position),
    so the state as of T depends only on the events that occurred before T."""
    changes, previous = [], None
    for row in log_rows:
        changes.append((row["at"], row["position"], {k: row[k] for k in STATE_COLUMNS
                                                      if previous is None or row[k] != previous[k]}))  # fmt: skip
        previous = row
    state: dict[str, Any] = {"customer_id": log_rows[0]["customer_id"], **dict.fromkeys(STATE_COLUMNS)}
    timeline = []
    for at, position, change in sorted(changes, key=lambda c: (c[0], c[1])):
        state = {**state, **change, "at": at, "position": position}
        timeline.append(state)
    return timeline


# Every feature seen in the book (each is numbered in FEATURE_BITS when its first use is folded,
# :mod:`projections.usage`) with its bit and the first day it was used (kept beside the bit).
FEATURES_WITH_FIRST_DAY = f"SELECT feature, bit, first_day FROM {FEATURE_BITS}"


# The book's days in a span (``day >= ? AND day < ?``) with the features used on them.
BOOK_DAY_ROWS = f"SELECT day, feature_bits FROM {BOOK_DAYS} WHERE day >= ? AND day < ?"


def used_lately(book_days: Iterable[tuple[str, Any]], names: dict[int, str], end: date) -> set[str]:
    """The features the book used in the :data:`KEY_FEATURE_LOOKBACK_DAYS` days before ``end``
    (``book_days``: rows of :data:`BOOK_DAY_ROWS` covering them; ``names``: feature bit -> name)."""
    start, stop = (end - timedelta(days=KEY_FEATURE_LOOKBACK_DAYS)).isoformat(), end.isoformat()
    used = reduce(or_, (bits_of(bits) for day, bits in book_days if start <= day < stop), 0)
    return {names[bit] for bit in range(used.bit_length()) if used >> bit & 1}


def book_key_features(tx: Tx, as_of: datetime) -> set[str]:
    """The default key features as of ``as_of``, as the health model's adoption has them
    (:func:`default_key_features` of the features the book used lately, :func:`used_lately`,
    before the end of the usage windows, :func:`usage_window_end`)."""
    stop = as_of.date()
    row = tx.fetchone(LAST_DAY_BEFORE, (stop.isoformat(),))
    end = usage_window_end(stop, row["day"] if row else None)
    rows = tx.rows(BOOK_DAY_ROWS, ((end - timedelta(days=KEY_FEATURE_LOOKBACK_DAYS)).isoformat(), end.isoformat()))
    names = {int(bit): feature for feature, bit, _ in tx.rows(FEATURES_WITH_FIRST_DAY)}
    return default_key_features(used_lately(rows, names, end))


def book_feature_first_days(tx: Tx) -> dict[str, str]:
    """Every feature seen in the book -> the first day it was used."""
    return _first_days(tx.rows(FEATURES_WITH_FIRST_DAY))


def _first_days(rows: list[tuple[Any, ...]]) -> dict[str, str]:
    return {feature: first for feature, _, first in rows if first is not None}


def days_between(later: date, earlier_iso: str) -> int:
    return (later - date.fromisoformat(earlier_iso[:10])).days
