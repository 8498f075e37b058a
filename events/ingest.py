"""Normalised signals (what each connector's pure ``translate`` produces) and the unit of work
that turns a batch of them into events.

A :class:`SignalBatch` folds a page or file of signals into their aggregates (loading each
once), recognises duplicates, and commits everything, with the connector's new cursor and
counts, in one atomic append: a sync killed mid-way either recorded a page and its cursor, or
neither, so running it again ends in the same state as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from events.commands import CommandMeta
from events.signals import SOLVED_STATES, Connector, EmailEvent, SurveyResponse, Ticket, UsageDay, signal_id

if TYPE_CHECKING:
    from events.application import CustomerSuccess

SESSION_EVENTS = frozenset({"$session_start", "session_start", "Session Start", "$ae_session", "App Open"})


@dataclass(frozen=True)
class Match:
    """Which customer a vendor record belongs to, and how that was decided."""

    customer_id: UUID | None
    how: str  # e.g. "zendesk_org_id=509974", "domain=acme.com", "unmatched: org 509974"


@dataclass(frozen=True)
class Rating:
    csat: float  # 0..1 (good = 1, bad = 0; a 1-5 rating r maps to (r-1)/4)
    raw: str
    comment: str | None
    rated_at: datetime


@dataclass(frozen=True)
class TicketSnapshot:
    vendor: str
    vendor_id: str
    org_ref: str | None
    requester_email: str | None
    subject: str | None
    status: str
    priority: str | None
    channel: str | None
    created_at: datetime
    updated_at: datetime
    rating: Rating | None = None


class UsageEvent(NamedTuple):
    """One raw product event. A NamedTuple, not a frozen dataclass: a million of these are
    built per large import, and a frozen dataclass's __init__ costs several times more."""

    account: str | None
    user: str
    name: str
    time: datetime
    insert_id: str
    email: str | None = None


class ChunkColumns:
    """The per-event columns of the groups of one parsed chunk, held for :class:`UsageGroup`.

    Either ``("lists", [(inserts, users, names, times, ordinals, repeats), ...])``, a tuple
    per group, or, for a chunk without repeated events, ``("flat", digests, users, names,
    times, positions)``: each column once for the whole chunk in line order, and per group the
    positions of its events. Packed into one opaque blob when pickled, unpacked on first use:
    flat columns (text and integers only) as MessagePack (msgspec, several times cheaper to
    write than a pickle of the same lists), the others (times may be datetimes) as a pickle."""

    __slots__ = ("_value", "_packed", "_msgpack")

    def __init__(self, value: tuple[Any, ...] | None, packed: bytes | None = None, msgpack: bool = False) -> None:
        self._value, self._packed, self._msgpack = value, packed, msgpack

    def __reduce__(self) -> tuple[Any, ...]:
        if self._packed is None:
            if self._value[0] == "flat":  # type: ignore[index]
                try:
                    self._packed, self._msgpack = msgspec.msgpack.encode(self._value), True
                except (msgspec.EncodeError, UnicodeEncodeError):  # e.g. text with a lone surrogate
                    pass
            if self._packed is None:
                self._packed = pickle.dumps(self._value, pickle.HIGHEST_PROTOCOL)
        return (ChunkColumns, (None, self._packed, self._msgpack))

    def of(self, index: int) -> tuple[list[Any], ...]:
        """(inserts, users, names, times, ordinals, repeats) of the ``index``-th group."""
        if self._value is None:
            packed: Any = self._packed
            self._value = msgspec.msgpack.decode(packed) if self._msgpack else pickle.loads(packed)
        value = self._value
        if value[0] == "lists":
            return value[1][index]  # type: ignore[no-any-return]
        _, digests, users, names, times, positions = value
        at = positions[index]
        return ([digests[i] for i in at], [users[i] for i in at], [names[i] for i in at], [times[i] for i in at],
                list(at), [])  # fmt: skip


class UsageGroup:
    """The raw product events of one account on one UTC day within a chunk of lines, as
    columns: what crosses from the process that parses lines to the one that rolls them up.

    Events are deduplicated by ``$insert_id`` digest within the group (the first occurrence
    is kept, later ones only count as duplicates and for the newest time). ``times`` hold
    unix seconds (ints) for the export's usual timestamps and aware datetimes for the rest,
    so no datetime is built per event. :meth:`summarise` fills in what the roll-up needs
    when every event turns out to be new (the usual case), so that costs nothing per event
    on the committing side.

    The columns (``inserts`` ... ``repeats``) may live in a :class:`ChunkColumns` shared by
    the chunk's groups, read on first use. Pickled (from the parsing process), a group is its
    summary, its sorted digests as one string, and its place in the chunk's columns, which
    the importing process unpacks only if it reads a column: :meth:`without` (a day partly
    seen before) and :meth:`merged` (several accounts of one customer), which the usual
    import never calls. Unpickling every column object by object cost the importing process
    about 2 us per raw event."""

    COLUMNS = ("inserts", "users", "names", "times", "ordinals", "repeats")
    SUMMARY = ("sorted_inserts", "distinct_users", "name_counts", "latest", "latest_all", "size")
    __slots__ = ("account", "day", "first", *COLUMNS, *SUMMARY, "_columns", "_index")
    DIGEST_WIDTH = 16  # short_hash: 16 hex digits

    def __init__(self, account: str | None, day: date, first: int) -> None:
        self.account, self.day, self.first = account, day, first  # first: the ordinal of its first event
        self.inserts: list[str] = []  # per event, in chunk order: $insert_id digest (unique here)
        self.users: list[str] = []
        self.names: list[str] = []
        self.times: list[int | datetime] = []
        self.ordinals: list[int] = []  # position of the event in its chunk (to merge groups in order)
        self.repeats: list[int | datetime] = []  # times of the events whose digest came earlier

    @classmethod
    def of_columns(cls, account: str | None, day: date, first: int, columns: ChunkColumns, index: int) -> UsageGroup:
        """A group whose columns are the ``index``-th of ``columns`` (summary not filled in)."""
        group = object.__new__(cls)
        group.account, group.day, group.first, group._columns, group._index = account, day, first, columns, index
        return group

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            columns, index = self._columns, self._index
        except AttributeError:  # columns of its own
            columns, index = ChunkColumns(("lists", [tuple(getattr(self, name) for name in self.COLUMNS)])), 0
        digests: str | list[str] = self.sorted_inserts
        joined = "".join(digests)
        width = self.DIGEST_WIDTH
        if len(joined) == width * len(digests) and all(map(width.__eq__, map(len, digests))):
            digests = joined
        return (_unpickled_group, (self.account, self.day, self.first, digests, self.distinct_users, self.name_counts,
                                   self.latest, self.latest_all, self.size, columns, index))  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        """A column kept in the chunk's columns: read on first use."""
        if name in UsageGroup.COLUMNS:
            columns = object.__getattribute__(self, "_columns").of(object.__getattribute__(self, "_index"))
            for column, value in zip(UsageGroup.COLUMNS, columns, strict=True):
                object.__setattr__(self, column, value)
            return object.__getattribute__(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _state(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in ("account", "day", "first", *self.COLUMNS, *self.SUMMARY))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UsageGroup) and self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]

    def summarise(self) -> UsageGroup:
        self.sorted_inserts = sorted(self.inserts)
        self.distinct_users = list(dict.fromkeys(self.users))
        self.name_counts = dict(Counter(self.names))  # first-seen order
        self.latest = _latest(self.times) if self.times else None  # None: every event was seen before
        self.latest_all = _latest([*self.times, *self.repeats]) if self.repeats else self.latest
        self.size = len(self.inserts) + len(self.repeats)  # events in the group, duplicates within it included
        return self

    def without(self, seen: set[str]) -> UsageGroup:
        """The events whose digest is not in ``seen``, in the same order (summarised)."""
        fresh = UsageGroup(self.account, self.day, self.first)
        for i, digest in enumerate(self.inserts):
            if digest not in seen:
                fresh.inserts.append(digest)
                fresh.users.append(self.users[i])
                fresh.names.append(self.names[i])
                fresh.times.append(self.times[i])
                fresh.ordinals.append(self.ordinals[i])
        return fresh.summarise()

    @classmethod
    def merged(cls, parts: list[UsageGroup]) -> UsageGroup:
        """Several accounts' groups of one customer-day as one, events in chunk order (a digest
        seen in two of them is kept once, at its first occurrence)."""
        rows = sorted((o, p, i) for p, part in enumerate(parts) for i, o in enumerate(part.ordinals))
        whole = cls(parts[0].account, parts[0].day, min(part.first for part in parts))
        kept: set[str] = set()
        for _, p, i in rows:
            part = parts[p]
            digest = part.inserts[i]
            if digest in kept:
                whole.repeats.append(part.times[i])
                continue
            kept.add(digest)
            whole.inserts.append(digest)
            whole.users.append(part.users[i])
            whole.names.append(part.names[i])
            whole.times.append(part.times[i])
            whole.ordinals.append(part.ordinals[i])
        for part in parts:
            whole.repeats.extend(part.repeats)
        return whole.summarise()


def _unpickled_group(account: str | None, day: date, first: int, digests: str | list[str], distinct_users: list[str],
                     name_counts: dict[str, int], latest: Any, latest_all: Any, size: int, columns: ChunkColumns,
                     index: int) -> UsageGroup:  # fmt: skip
    group = UsageGroup.of_columns(account, day, first, columns, index)
    if type(digests) is str:
        width = UsageGroup.DIGEST_WIDTH
        digests = [digests[i : i + width] for i in range(0, len(digests), width)]
    group.sorted_inserts, group.distinct_users, group.name_counts = digests, distinct_users, name_counts
    group.latest, group.latest_all, group.size = latest, latest_all, size
    return group


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _instant(moment: int | datetime) -> timedelta:
    return timedelta(seconds=moment) if type(moment) is int else moment - _EPOCH  # type: ignore[operator]


def _latest(times: list[int | datetime]) -> int | datetime:
    """The newest of unix seconds and aware datetimes (the first of equal instants, as max() keeps)."""
    try:
        return max(times)  # type: ignore[type-var]
    except TypeError:  # both kinds
        return max(times, key=_instant)


def moment_of(value: int | datetime) -> datetime:
    return datetime.fromtimestamp(value, timezone.utc) if type(value) is int else value  # type: ignore[arg-type]


class UsageCarry:
    """What an import of many chunks carries from one chunk's commit to the next: each
    customer's user digests (the same for every day), the ids of the last chunk's
    customer-days, and the usage days the last chunk committed, at their stored state, so that
    the next chunk (which mostly continues the last chunk's days: the export is ordered by
    time) does not read them back and fold them again.

    :meth:`SignalBatch.usage` takes the days (a batch that fails leaves none behind: its
    aggregates may hold events that were never stored) and :meth:`SignalBatch.commit` puts back
    those of its batch once they are stored. A day another writer appended to meanwhile fails
    that commit with a version conflict, and the retry reads it from the store."""

    __slots__ = ("user_hashes", "ids", "days")

    def __init__(self) -> None:
        self.user_hashes: dict[str, dict[str, str]] = {}  # per customer key: user -> digest
        self.ids: dict[tuple[str | None, str, date], UUID] = {}  # (customer, account, day) -> UsageDay id
        self.days: dict[UUID, UsageDay] = {}


_USAGE_TOPIC = get_topic(UsageDay)
_OPENED, _COUNTED = UsageDay.Opened, UsageDay.Counted


def open_usage_day(uid: UUID, customer_id: str | None, account: str, day: str, kw: dict[str, Any]) -> UsageDay:
    """``UsageDay(customer_id=..., account=..., day=..., **kw)`` for the id the roll-up already
    has: the same ``Opened`` event (its fields in the dataclass's order) and the aggregate that
    eventsourcing folds from it (``event.mutate(None)``, as a replay does), without the ``@event``
    call's argument coercion and signature filtering, and without computing the uuid5 id again."""
    event = object.__new__(_OPENED)
    object.__setattr__(event, "__dict__", {
        "originator_id": uid, "originator_version": 1, "timestamp": _OPENED.create_timestamp(),
        "originator_topic": _USAGE_TOPIC, "actor": kw["actor"], "source": kw["source"], "source_id": kw["source_id"],
        "occurred_at": kw["occurred_at"], "customer_id": customer_id, "account": account, "day": day,
    })  # fmt: skip
    usage_day: UsageDay = event.mutate(None)  # type: ignore[assignment]
    usage_day.pending_events.append(event)
    return usage_day


def count_usage(usage_day: UsageDay, events: int, sessions: int, users: list[str], features: dict[str, int],
                insert_ids: list[str], kw: dict[str, Any]) -> None:  # fmt: skip
    """``usage_day.count(events=..., ..., **kw)``: the same ``Counted`` event (fields in the
    dataclass's order), applied by eventsourcing's own ``mutate`` (the method's body, the
    version, ``modified_on``), without the ``@event`` call's argument handling."""
    event = object.__new__(_COUNTED)
    object.__setattr__(event, "__dict__", {
        "originator_id": usage_day.id, "originator_version": usage_day.version + 1,
        "timestamp": _COUNTED.create_timestamp(), "actor": kw["actor"], "source": kw["source"],
        "source_id": kw["source_id"], "occurred_at": kw["occurred_at"], "events": events, "sessions": sessions,
        "users": users, "features": features, "insert_ids": insert_ids,
    })  # fmt: skip
    event.mutate(usage_day)
    usage_day.pending_events.append(event)


@dataclass(frozen=True)
class SurveyAnswer:
    response_id: str
    customer_ref: str | None
    email: str | None
    score: int
    comment: str | None
    responded_at: datetime


@dataclass(frozen=True)
class EmailActivity:
    vendor_event_id: str
    kind: str
    email: str | None
    message_id: str | None
    url: str | None
    reason: str | None
    at: datetime


@dataclass
class BatchReport:
    received: int = 0
    recorded: int = 0
    unchanged: int = 0
    duplicates: int = 0
    unmatched: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    position: int | None = None

    def merge(self, other: BatchReport) -> None:
        self.received += other.received
        self.recorded += other.recorded
        self.unchanged += other.unchanged
        self.duplicates += other.duplicates
        self.unmatched += other.unmatched
        self.rejected += other.rejected
        self.position = other.position or self.position

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received, "recorded": self.recorded, "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched, "rejected": self.rejected, "last_position": self.position,
        }  # fmt: skip


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def short_hash(*parts: str) -> str:
    """A 16-hex-digit digest: enough to dedupe, and no raw user id or insert id is stored."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


class SignalBatch:
    """Collects the events of one batch of signals; :meth:`commit` appends them atomically."""

    def __init__(self, app: CustomerSuccess, vendor: str, channel: str, meta: CommandMeta) -> None:
        self.app = app
        self.vendor = vendor
        self.channel = channel
        self.meta = meta
        self.report = BatchReport()
        self._aggregates: dict[UUID, Aggregate] = {}
        self._absent: set[UUID] = set()  # looked up in bulk and not stored (yet)
        self._carry: UsageCarry | None = None  # given to usage(): gets this batch's days back once stored

    # ------------------------------------------------------------------ helpers
    def _load(self, aggregate_id: UUID) -> Aggregate | None:
        if aggregate_id in self._aggregates:
            return self._aggregates[aggregate_id]
        if aggregate_id in self._absent or not self.app.exists(aggregate_id):
            return None
        aggregate: Aggregate = self.app.repository.get(aggregate_id)
        self._aggregates[aggregate_id] = aggregate
        return aggregate

    def _preload(self, aggregate_ids: Iterable[UUID], held: dict[UUID, Any] | None = None) -> None:
        """Load the stored ones of many aggregates at once (a few queries instead of two per id);
        ``held``: those the caller has at their stored state (see ``load_many``)."""
        wanted = [i for i in aggregate_ids if i not in self._aggregates and i not in self._absent]
        found = self.app.load_many(wanted, held=held)
        self._aggregates.update(found)
        self._absent.update(i for i in wanted if i not in found)

    def _kw(self, occurred_at: datetime, source_id: str) -> dict[str, Any]:
        return {"actor": self.meta.actor, "source": self.meta.source, "source_id": source_id, "occurred_at": occurred_at}

    def _seal(self, owner: UUID, text: str | None) -> str | None:
        return self.app.codec.encrypt(owner, text)

    def _counted(self, match: Match) -> None:
        if match.customer_id is None:
            self.report.unmatched += 1

    # ------------------------------------------------------------------ tickets
    def preload_tickets(self, snaps: Iterable[TicketSnapshot | None]) -> None:
        """Load the stored tickets among these snapshots' at once, before :meth:`ticket` is
        called for each (a group of webhook deliveries: one query instead of two per ticket)."""
        self._preload(dict.fromkeys(Ticket.create_id(s.vendor, s.vendor_id) for s in snaps if s is not None))

    def ticket(self, snap: TicketSnapshot, match: Match) -> str:
        """Fold one vendor snapshot of a ticket: 'recorded', 'unchanged' or 'duplicate'."""
        self.report.received += 1
        tid = Ticket.create_id(snap.vendor, snap.vendor_id)
        ticket: Ticket | None = self._load(tid)  # type: ignore[assignment]
        snapshot_at = _iso(snap.updated_at)
        source_id = f"{snap.vendor_id}@{snapshot_at}"
        before = 0
        if ticket is None:
            owner = match.customer_id or tid
            ticket = Ticket(
                vendor=snap.vendor, vendor_id=snap.vendor_id,
                customer_id=str(match.customer_id) if match.customer_id else None, match=match.how,
                key_owner=str(owner), status=snap.status, priority=snap.priority,
                subject=self._seal(owner, snap.subject), requester=self._seal(owner, snap.requester_email),
                channel=snap.channel, snapshot_at=snapshot_at, **self._kw(snap.created_at, source_id),
            )  # fmt: skip
            self._aggregates[tid] = ticket
            self._counted(match)
        else:
            before = len(ticket.pending_events)  # type: ignore[attr-defined]
            if snapshot_at <= ticket.snapshot_at:
                self.report.duplicates += 1
                return "duplicate"
            if (snap.status, snap.priority) != (ticket.status, ticket.priority):
                ticket.change(status=snap.status, priority=snap.priority, snapshot_at=snapshot_at,
                              **self._kw(snap.updated_at, source_id))  # fmt: skip
            else:
                ticket.snapshot_at = snapshot_at  # seen, nothing to record; not persisted on its own
        if snap.status in SOLVED_STATES and not ticket.solved:
            ticket.solve(solved_at=snapshot_at, **self._kw(snap.updated_at, source_id))
        elif snap.status not in SOLVED_STATES and ticket.solved:
            ticket.reopen(status=snap.status, **self._kw(snap.updated_at, source_id))
        rating = snap.rating
        if rating is not None and ticket.rating != (rating.csat, rating.raw):
            ticket.rate(csat=rating.csat, raw_score=rating.raw,
                        comment=self._seal(UUID(ticket.key_owner), rating.comment),
                        **self._kw(rating.rated_at, source_id))  # fmt: skip
        if len(ticket.pending_events) > before:  # type: ignore[attr-defined]
            self.report.recorded += 1
            return "recorded"
        self.report.unchanged += 1
        return "unchanged"

    # -------------------------------------------------------------------- usage
    def usage(self, groups: list[UsageGroup], match_for: dict[str | None, Match], carry: UsageCarry | None = None) -> None:
        """Roll raw product events, grouped per account-day in chunk order, up per customer-day;
        an ``$insert_id`` already seen counts once. ``carry`` holds what the previous chunks of
        the same import leave to this one (see :class:`UsageCarry`)."""
        customers = {account: str(m.customer_id) if m.customer_id else None for account, m in match_for.items()}
        carry = UsageCarry() if carry is None else carry
        held, carry.days = carry.days, {}  # taken: see UsageCarry
        self._carry = carry
        hashes = carry.user_hashes
        merged: dict[tuple[str | None, str, date], list[UsageGroup]] = {}
        for g in groups:  # in the order of their first event, as the customer-days are then
            customer = customers[g.account]
            merged.setdefault((customer, "" if customer else (g.account or ""), g.day), []).append(g)
            self.report.received += g.size
        keys = {group: (group[0], group[1], group[2].isoformat()) for group in merged}
        known_ids = carry.ids
        uids = {group: known_ids.get(group) or UsageDay.create_id(*key) for group, key in keys.items()}
        carry.ids = uids  # the next chunk mostly continues these days
        self._preload(uids.values(), held)
        for group, parts in merged.items():
            customer, account, day = keys[group]
            uid = uids[group]
            key = customer or f"unmatched:{account}"
            whole = parts[0] if len(parts) == 1 else UsageGroup.merged(parts)
            usage_day: UsageDay | None = self._load(uid)  # type: ignore[assignment]
            if usage_day is None:
                usage_day = open_usage_day(uid, customer, account, day,
                                           self._kw(moment_of(whole.latest_all), f"{key}/{day}"))  # fmt: skip
                self._aggregates[uid] = usage_day
            seen = usage_day.seen_inserts
            if not seen or seen.isdisjoint(whole.sorted_inserts):
                fresh = whole
            elif seen.issuperset(whole.sorted_inserts):  # a file or day read again
                self.report.duplicates += whole.size
                continue
            else:
                fresh = whole.without(seen)
            self.report.duplicates += whole.size - len(fresh.sorted_inserts)
            if not fresh.sorted_inserts:
                continue
            if customer is None:
                self.report.unmatched += len(fresh.sorted_inserts)
            known = hashes.get(key)
            if known is None:
                known = hashes[key] = {}
            try:
                digests = set(map(known.__getitem__, fresh.distinct_users))
            except KeyError:  # users not met before in this import
                for user in fresh.distinct_users:
                    if user not in known:
                        known[user] = short_hash(key, user)
                digests = set(map(known.__getitem__, fresh.distinct_users))
            names = fresh.name_counts
            count_usage(
                usage_day, len(fresh.sorted_inserts),
                sum(n for name, n in names.items() if name in SESSION_EVENTS),
                sorted(digests - usage_day.seen_users),
                {name: n for name, n in names.items() if name not in SESSION_EVENTS},
                fresh.sorted_inserts, self._kw(moment_of(fresh.latest), f"{key}/{day}"),
            )  # fmt: skip
            self.report.recorded += len(fresh.sorted_inserts)

    # ------------------------------------------------------------------ surveys
    def survey(self, answer: SurveyAnswer, match: Match) -> str:
        self.report.received += 1
        sid = SurveyResponse.create_id(answer.response_id)
        if self._load(sid) is not None:
            self.report.duplicates += 1
            return "duplicate"
        owner = match.customer_id or sid
        self._aggregates[sid] = SurveyResponse(
            response_id=answer.response_id, customer_id=str(match.customer_id) if match.customer_id else None,
            match=match.how, key_owner=str(owner), score=answer.score, comment=self._seal(owner, answer.comment),
            email=self._seal(owner, answer.email), **self._kw(answer.responded_at, answer.response_id),
        )  # fmt: skip
        self._counted(match)
        self.report.recorded += 1
        return "recorded"

    # ------------------------------------------------------------------- emails
    def email(self, activity: EmailActivity, match: Match) -> str:
        self.report.received += 1
        eid = EmailEvent.create_id(activity.vendor_event_id)
        if self._load(eid) is not None:
            self.report.duplicates += 1
            return "duplicate"
        owner = match.customer_id or eid
        self._aggregates[eid] = EmailEvent(
            vendor_event_id=activity.vendor_event_id,
            customer_id=str(match.customer_id) if match.customer_id else None, match=match.how,
            key_owner=str(owner), kind=activity.kind, email=self._seal(owner, activity.email),
            message_id=activity.message_id, url=activity.url, reason=activity.reason,
            **self._kw(activity.at, activity.vendor_event_id),
        )  # fmt: skip
        self._counted(match)
        self.report.recorded += 1
        return "recorded"

    def reject(self, where: str, field_name: str, reason: str) -> None:
        self.report.received += 1
        self.report.rejected.append({"where": where, "field": field_name, "reason": reason})

    # ------------------------------------------------------------------- commit
    def commit(self, cursor: str | None = None, *, record_batch: bool = True) -> BatchReport:
        """Append every pending event and the connector's batch record in one transaction.

        For a sync page the connector record (with the new cursor) is written even when the
        page held only duplicates, so the cursor never falls behind what was read. Webhook
        deliveries pass ``record_batch=False``: one connector event per delivery would make
        every delivery contend for the same aggregate; their counts live in metrics."""
        pending = [e for a in self._aggregates.values() for e in a.collect_events()]
        if not record_batch:
            if pending:
                self.report.position = self.app.save(*pending)[-1].notification.id
        elif pending or cursor is not None:
            cid = signal_id("connector", self.vendor)
            connector: Connector | None = self._load(cid)  # type: ignore[assignment]
            now = datetime.now(timezone.utc)
            if connector is None:
                connector = Connector(vendor=self.vendor, **self._kw(now, self.vendor))
            r = self.report
            connector.ingested(channel=self.channel, cursor=cursor, received=r.received, recorded=r.recorded,
                               duplicates=r.duplicates, unmatched=r.unmatched, rejected=len(r.rejected),
                               **self._kw(now, self.meta.source_id))  # fmt: skip
            # The connector goes in as an aggregate, not as events, so the application's
            # snapshotting interval applies to it (it gains an event per batch for ever).
            recordings = self.app.save_events(pending, connector)
            self.report.position = recordings[-1].notification.id
        if self._carry is not None:  # stored: their state is the store's now
            self._carry.days = {i: a for i, a in self._aggregates.items() if type(a) is UsageDay}
        self._aggregates.clear()
        self._absent.clear()
        return self.report
