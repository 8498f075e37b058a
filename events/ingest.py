"""Normalised signals (what each connector's pure ``translate`` produces) and the unit of work
that turns a batch of them into events.

A :class:`SignalBatch` folds a page or file of signals into their aggregates (loading each
once), recognises duplicates, and commits everything, with the connector's new cursor and
counts, in one atomic append: a sync killed mid-way either recorded a page and its cursor, or
neither, so running it again ends in the same state as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from eventsourcing.domain import Aggregate

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

    # ------------------------------------------------------------------ helpers
    def _load(self, aggregate_id: UUID) -> Aggregate | None:
        if aggregate_id in self._aggregates:
            return self._aggregates[aggregate_id]
        if aggregate_id in self._absent or not self.app.exists(aggregate_id):
            return None
        aggregate: Aggregate = self.app.repository.get(aggregate_id)
        self._aggregates[aggregate_id] = aggregate
        return aggregate

    def _preload(self, aggregate_ids: Iterable[UUID]) -> None:
        """Load the stored ones of many aggregates at once (a few queries instead of two per id)."""
        wanted = [i for i in aggregate_ids if i not in self._aggregates and i not in self._absent]
        found = self.app.load_many(wanted)
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
    def usage(self, events: list[UsageEvent], match_for: dict[str | None, Match]) -> None:
        """Roll raw product events up per customer-day; ``$insert_id`` already seen counts once."""
        customers = {account: str(m.customer_id) if m.customer_id else None for account, m in match_for.items()}
        utc = timezone.utc
        groups: dict[tuple[str | None, str, date], list[UsageEvent]] = {}
        for e in events:
            customer = customers[e.account]
            account = "" if customer else (e.account or "")  # a matched customer's days are one stream
            utc_day = (e.time if e.time.tzinfo is utc else e.time.astimezone(utc)).date()
            groups.setdefault((customer, account, utc_day), []).append(e)
        self.report.received += len(events)
        keys = {group: (group[0], group[1], group[2].isoformat()) for group in groups}
        uids = {group: UsageDay.create_id(*key) for group, key in keys.items()}
        self._preload(uids.values())
        for group, items in groups.items():
            customer, account, day = keys[group]
            uid = uids[group]
            key = customer or f"unmatched:{account}"
            usage_day: UsageDay | None = self._load(uid)  # type: ignore[assignment]
            if usage_day is None:
                latest = max(e.time for e in items)
                usage_day = UsageDay(customer_id=customer, account=account, day=day, **self._kw(latest, f"{key}/{day}"))
                self._aggregates[uid] = usage_day
            seen = usage_day.seen_inserts
            fresh: dict[str, UsageEvent] = {}
            for e in items:
                digest = short_hash(e.insert_id)
                if digest not in seen and digest not in fresh:
                    fresh[digest] = e
            self.report.duplicates += len(items) - len(fresh)
            if not fresh:
                continue
            if customer is None:
                self.report.unmatched += len(fresh)
            users = sorted({short_hash(key, user) for user in {e.user for e in fresh.values()}} - usage_day.seen_users)
            names = Counter(e.name for e in fresh.values())  # first-seen order, as the features dict keeps it
            usage_day.count(
                events=len(fresh),
                sessions=sum(n for name, n in names.items() if name in SESSION_EVENTS),
                users=users,
                features={name: n for name, n in names.items() if name not in SESSION_EVENTS},
                insert_ids=sorted(fresh),
                **self._kw(max(e.time for e in fresh.values()), f"{key}/{day}"),
            )
            self.report.recorded += len(fresh)

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
            recordings = self.app.save(*pending, connector)
            self.report.position = recordings[-1].notification.id
        self._aggregates.clear()
        self._absent.clear()
        return self.report
