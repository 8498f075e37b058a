"""Aggregates for the signals that connectors bring in: tickets, usage days, survey
responses, e-mail events, and each connector's own sync progress.

Every external fact has a deterministic aggregate id (uuid5 of vendor and vendor id, see
:func:`signal_id`), so a duplicate delivery finds its aggregate and records nothing new.
Free text and addresses from customers are ``pd1:`` tokens encrypted under the key of
``key_owner`` (the matched customer, else the record itself).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from events.domain import DomainEvent

SIGNAL_NAMESPACE = uuid5(NAMESPACE_URL, "https://199os.example/cs/signal")
SOLVED_STATES = frozenset({"solved", "closed"})


def signal_id(kind: str, *parts: object) -> UUID:
    """The id of an external fact: the same vendor record always maps to the same aggregate."""
    return _signal_uuid(":".join([kind, *(str(p) for p in parts)]))


@lru_cache(maxsize=8192)
def _signal_uuid(name: str) -> UUID:
    # A delivery asks for its ticket's id about three times (group preload, fold, projections),
    # ~10 us of SHA-1 and UUID construction each; a bounded cache answers the repeats.
    return uuid5(SIGNAL_NAMESPACE, name)


class Ticket(Aggregate):
    """A support ticket or conversation (Zendesk, Intercom), folded from vendor snapshots."""

    class Event(DomainEvent):
        pass

    class Opened(Event, Aggregate.Created):
        vendor: str
        vendor_id: str
        customer_id: str | None
        match: str
        key_owner: str
        status: str
        priority: str | None
        subject: str | None
        requester: str | None
        channel: str | None
        snapshot_at: str

    class Changed(Event):
        status: str
        priority: str | None
        snapshot_at: str

    class Solved(Event):
        solved_at: str

    class Reopened(Event):
        status: str

    class Rated(Event):
        csat: float
        raw_score: str
        comment: str | None

    @staticmethod
    def create_id(vendor: str, vendor_id: str, **_: Any) -> UUID:
        return signal_id("ticket", vendor, vendor_id)

    @event(Opened)
    def __init__(self, *, vendor: str, vendor_id: str, customer_id: str | None, match: str, key_owner: str,
                 status: str, priority: str | None, subject: str | None, requester: str | None,
                 channel: str | None, snapshot_at: str, actor: str, source: str, source_id: str,
                 occurred_at: datetime) -> None:  # fmt: skip
        self.vendor, self.vendor_id, self.customer_id = vendor, vendor_id, customer_id
        self.key_owner = key_owner
        self.status, self.priority, self.snapshot_at = status, priority, snapshot_at
        self.solved = False
        self.rating: tuple[float, str | None] | None = None

    @event(Changed)
    def change(self, *, status: str, priority: str | None, snapshot_at: str, actor: str, source: str,
               source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.status, self.priority, self.snapshot_at = status, priority, snapshot_at

    @event(Solved)
    def solve(self, *, solved_at: str, actor: str, source: str, source_id: str, occurred_at: datetime) -> None:
        self.solved = True

    @event(Reopened)
    def reopen(self, *, status: str, actor: str, source: str, source_id: str, occurred_at: datetime) -> None:
        self.solved = False

    @event(Rated)
    def rate(self, *, csat: float, raw_score: str, comment: str | None, actor: str, source: str,
             source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.rating = (csat, raw_score)


class UsageDay(Aggregate):
    """Product usage of one customer (or one unmatched account) on one UTC day, rolled up."""

    class Event(DomainEvent):
        pass

    class Opened(Event, Aggregate.Created):
        customer_id: str | None
        account: str
        day: str

    class Counted(Event):
        events: int
        sessions: int
        users: list[str]
        features: dict[str, int]
        insert_ids: list[str]

    @staticmethod
    def create_id(customer_id: str | None, account: str, day: str, **_: Any) -> UUID:
        return signal_id("usage", customer_id or f"unmatched:{account or '-'}", day)

    @event(Opened)
    def __init__(self, *, customer_id: str | None, account: str, day: str, actor: str, source: str,
                 source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.customer_id, self.account, self.day = customer_id, account, day
        self.seen_inserts: set[str] = set()
        self.seen_users: set[str] = set()

    @event(Counted)
    def count(self, *, events: int, sessions: int, users: list[str], features: dict[str, int],
              insert_ids: list[str], actor: str, source: str, source_id: str,
              occurred_at: datetime) -> None:  # fmt: skip
        self.seen_inserts.update(insert_ids)
        self.seen_users.update(users)


class SurveyResponse(Aggregate):
    """One NPS (0-10) survey answer."""

    class Event(DomainEvent):
        pass

    class Recorded(Event, Aggregate.Created):
        response_id: str
        customer_id: str | None
        match: str
        key_owner: str
        score: int
        comment: str | None
        email: str | None

    @staticmethod
    def create_id(response_id: str, **_: Any) -> UUID:
        return signal_id("survey", response_id)

    @event(Recorded)
    def __init__(self, *, response_id: str, customer_id: str | None, match: str, key_owner: str, score: int,
                 comment: str | None, email: str | None, actor: str, source: str, source_id: str,
                 occurred_at: datetime) -> None:  # fmt: skip
        self.customer_id, self.score = customer_id, score


# The kind an e-mail event is recorded with when SendGrid flags an open sg_machine_open: made by
# Apple Mail Privacy Protection, which fetches every message's pixel, read or not (no engagement).
MACHINE_OPEN = "machine_open"


class EmailEvent(Aggregate):
    """One e-mail delivery event (delivered, open, click, bounce, ...) from SendGrid."""

    class Event(DomainEvent):
        pass

    class Recorded(Event, Aggregate.Created):
        vendor_event_id: str
        customer_id: str | None
        match: str
        key_owner: str
        kind: str
        email: str | None
        message_id: str | None
        url: str | None
        reason: str | None

    @staticmethod
    def create_id(vendor_event_id: str, **_: Any) -> UUID:
        return signal_id("email", "sendgrid", vendor_event_id)

    @event(Recorded)
    def __init__(self, *, vendor_event_id: str, customer_id: str | None, match: str, key_owner: str, kind: str,
                 email: str | None, message_id: str | None, url: str | None, reason: str | None, actor: str,
                 source: str, source_id: str, occurred_at: datetime) -> None:  # fmt: skip
        self.customer_id, self.kind = customer_id, kind


class Connector(Aggregate):
    """A vendor connection: its sync cursor and what each batch brought (sync or file import)."""

    class Event(DomainEvent):
        pass

    class Started(Event, Aggregate.Created):
        vendor: str

    class BatchIngested(Event):
        channel: str
        cursor: str | None
        received: int
        recorded: int
        duplicates: int
        unmatched: int
        rejected: int

    class SyncFailed(Event):
        channel: str
        error: str

    @staticmethod
    def create_id(vendor: str, **_: Any) -> UUID:
        return signal_id("connector", vendor)

    @event(Started)
    def __init__(self, *, vendor: str, actor: str, source: str, source_id: str, occurred_at: datetime) -> None:
        self.vendor = vendor
        self.cursor: str | None = None

    @event(BatchIngested)
    def ingested(self, *, channel: str, cursor: str | None, received: int, recorded: int, duplicates: int,
                 unmatched: int, rejected: int, actor: str, source: str, source_id: str,
                 occurred_at: datetime) -> None:  # fmt: skip
        if cursor is not None:
            self.cursor = cursor

    @event(SyncFailed)
    def failed(self, *, channel: str, error: str, actor: str, source: str, source_id: str,
               occurred_at: datetime) -> None:  # fmt: skip
        pass
