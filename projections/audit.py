"""Tamper evidence for the event log: a hash chain over the stored events (DESIGN §9).

``AuditChainProjection`` links every stored event, in log order, as it is folded::

    link(n) = sha256(bytes.fromhex(link(previous)) || canonical(event n)).hexdigest()

where ``previous`` is the event linked just before (positions may have gaps on
PostgreSQL), the genesis link is 64 zeros, and ``canonical`` is an unambiguous encoding of
the stored record exactly as the recorder returns it (see :func:`canonical_bytes`). It
works on the raw notification (``raw = True``), so it never depends on decoding an event
and links events no other projection can read.

:func:`verify_chain` recomputes the chain from the events now in the store and compares it
with the recorded links: an event changed, deleted or inserted after it was linked is
reported at its position. Events the projection has not linked yet are *unverified*, not
broken. A rebuild of this projection re-links the log as it is now (tampering included), so
`cs rebuild` leaves it out unless named, and verifies it before rebuilding it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from projections.base import Projection, uuid_text
from projections.runner import ProjectionStoppedError
from projections.store import Tx, ViewStore

NAME = "audit_chain_v1"
CHAIN = "cs_audit_chain_v1"
GENESIS = "0" * 64
_U64 = struct.Struct(">Q")
_EIGHT = _U64.pack(8)  # the length prefix of an 8-byte field

CHANGED = "stored event differs from the one that was linked (hash mismatch: its bytes or its link changed)"
MISSING = "linked event is missing from the log (deleted)"
NOT_LINKED = "stored event has no link in the chain (inserted after the chain passed it, or its link was deleted)"


class MalformedEventError(ValueError):
    """A stored record with a column of the wrong type (e.g. a text ``state``): no canonical form."""


def canonical_bytes(position: int, originator_id: Any, originator_version: int, topic: str, state: bytes) -> bytes:
    """The stored event as hashed: each field length-prefixed (8-byte big-endian), in order
    position, originator_id (canonical UUID text), originator_version, topic (UTF-8), state."""
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise MalformedEventError(f"state is {type(state).__name__}, not bytes")
    if not isinstance(topic, str) or not isinstance(originator_version, int):
        raise MalformedEventError(
            f"topic/originator_version are {type(topic).__name__}/{type(originator_version).__name__}"
        )
    oid, name = uuid_text(originator_id).encode(), topic.encode()
    body = state if type(state) is bytes else bytes(state)
    pack = _U64.pack
    return b"".join((_EIGHT, pack(position), pack(len(oid)), oid, _EIGHT, pack(originator_version),
                     pack(len(name)), name, pack(len(body)), body))  # fmt: skip


def link(previous: str, notification: Any) -> str:
    """The chain link of one stored notification after ``previous`` (a hex digest)."""
    return link_bytes(bytes.fromhex(previous), notification).hex()


def link_bytes(previous: bytes, notification: Any) -> bytes:
    """:func:`link` as bytes, after ``previous`` as bytes (a chain computed link after link)."""
    digest = hashlib.sha256(previous)
    digest.update(canonical_bytes(notification.id, notification.originator_id, notification.originator_version,
                                  notification.topic, notification.state))  # fmt: skip
    return digest.digest()


class AuditChainProjection(Projection):
    """Writes ``cs_audit_chain_v1(position, hash)``: one link per stored event."""

    name = NAME
    tables = (CHAIN,)
    raw = True

    def __init__(self) -> None:
        # (transaction, position, hash) of the last link written in that transaction: a batch
        # reads its predecessor once. Held strongly, so a later transaction is never mistaken
        # for it; a rolled-back transaction is simply never seen again.
        self._last: tuple[Tx, int, str] | None = None

    def schema(self) -> list[str]:
        return [f"CREATE TABLE IF NOT EXISTS {CHAIN} (position BIGINT PRIMARY KEY, hash TEXT NOT NULL)"]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if self._last is not None and self._last[0] is tx:
            previous_position, previous = self._last[1], self._last[2]
        else:
            row = tx.fetchone(f"SELECT position, hash FROM {CHAIN} ORDER BY position DESC LIMIT 1")
            previous_position, previous = (int(row["position"]), row["hash"]) if row else (0, GENESIS)
        if position <= previous_position:
            raise ValueError(f"event {position} is not after the last linked event {previous_position}")
        current = link(previous, event)
        tx.execute(f"INSERT INTO {CHAIN} (position, hash) VALUES (?, ?)", (position, current))
        self._last = (tx, position, current)

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """The links ``handle`` writes one by one, computed in order and inserted in one statement."""
        if not items:
            return
        if self._last is not None and self._last[0] is tx:
            previous_position, previous = self._last[1], self._last[2]
        else:
            row = tx.fetchone(f"SELECT position, hash FROM {CHAIN} ORDER BY position DESC LIMIT 1")
            previous_position, previous = (int(row["position"]), row["hash"]) if row else (0, GENESIS)
        rows = []
        digest = bytes.fromhex(previous)
        for notification, position in items:
            if position <= previous_position:
                raise ValueError(f"event {position} is not after the last linked event {previous_position}")
            digest, previous_position = link_bytes(digest, notification), position
            previous = digest.hex()
            rows.append((position, previous))
        tx.insert_many(CHAIN, ("position", "hash"), rows)
        self._last = (tx, previous_position, previous)

    def drop(self, tx: Tx) -> None:
        self._last = None
        super().drop(tx)


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`.

    ``checked``: events whose link was recomputed and matched (up to the first break);
    ``first_broken``/``reason``: the first position where the log and the chain disagree;
    ``head``: the last position in the log; ``linked``: the last linked position;
    ``unverified``: events after ``linked``, not linked yet (not a failure)."""

    checked: int
    first_broken: int | None
    reason: str | None
    head: int
    linked: int = 0
    unverified: int = 0

    @property
    def ok(self) -> bool:
        return self.first_broken is None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def summary(self) -> str:
        """One line for an operator."""
        if not self.ok:
            return f"broken at position {self.first_broken}: {self.reason}"
        tail = ""
        if self.unverified:
            tail = f"; {self.unverified} event(s) after {self.linked} not linked yet (unverified)"
        return f"intact: {self.checked} event(s) checked up to position {self.linked} (head {self.head}){tail}"


def _links(store: ViewStore, after: int, stop: int, batch: int) -> Iterator[tuple[int, str]]:
    while after < stop:
        with store.snapshot() as tx:
            rows = tx.fetchall(
                f"SELECT position, hash FROM {CHAIN} WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                (after, stop, batch),
            )
        if not rows:
            return
        for row in rows:
            yield int(row["position"]), str(row["hash"])
        after = int(rows[-1]["position"])


@dataclass(frozen=True)
class _Unreadable:
    """A stored record the recorder fails to read (e.g. an originator id that is no UUID)."""

    id: int
    error: str


def _events(recorder: Any, after: int, stop: int, batch: int) -> Iterator[Any]:
    while True:
        try:
            rows = recorder.select_notifications(start=after, limit=batch, stop=stop, inclusive_of_start=False)
        except (ValueError, TypeError):  # a record the recorder cannot convert: find it
            yield from _one_by_one(recorder, after, stop)
            return
        if not rows:
            return
        yield from rows
        after = rows[-1].id


def _one_by_one(recorder: Any, after: int, stop: int) -> Iterator[Any]:
    """Read with a growing ``stop`` until the read fails: the record at that position is the
    unreadable one (reported, then the walk ends)."""
    position = after
    while position < stop:
        position += 1
        try:
            rows = recorder.select_notifications(start=after, limit=1, stop=position, inclusive_of_start=False)
        except (ValueError, TypeError) as exc:
            yield _Unreadable(position, f"{type(exc).__name__}: {exc}")
            return
        if rows:
            yield rows[0]
            after = rows[0].id


def verify_chain(store: ViewStore, recorder: Any, *, batch: int = 1000) -> VerifyReport:
    """Recompute the chain from the raw stored events and compare it with the recorded links.

    Walks the log and the chain side by side up to the last position the projection has
    passed (its last link, or its checkpoint if links were deleted after it), stopping at
    the first disagreement: an event whose bytes changed, an event with no link (inserted
    after the chain passed it, or its link deleted), a link with no event (deleted)."""
    with store.snapshot() as tx:  # links and checkpoint move together: read them together
        row = tx.fetchone(f"SELECT MAX(position) AS last FROM {CHAIN}")
        linked = int(row["last"] or 0) if row else 0
        passed = max(linked, tx.get_checkpoint(NAME))
    head = int(recorder.max_notification_id() or 0)  # after: events are stored before they are linked
    events, links = _events(recorder, 0, passed, batch), _links(store, 0, passed, batch)
    event, recorded = next(events, None), next(links, None)
    previous, checked = GENESIS, 0
    broken: tuple[int, str] | None = None
    while event is not None or recorded is not None:
        if isinstance(event, _Unreadable) and (recorded is None or event.id <= recorded[0]):
            broken = (event.id, f"stored event cannot be read: {event.error}")
        elif recorded is None or (event is not None and event.id < recorded[0]):
            assert event is not None
            broken = (event.id, NOT_LINKED)
        elif event is None or recorded[0] < event.id:
            broken = (recorded[0], MISSING)
        else:
            try:
                computed = link(previous, event)
            except MalformedEventError as exc:
                broken = (event.id, f"stored event is malformed: {exc}")
            else:
                broken = (event.id, CHANGED) if computed != recorded[1] else None
        if broken:
            break
        previous, checked = computed, checked + 1
        event, recorded = next(events, None), next(links, None)
    unverified = sum(1 for _ in _events(recorder, passed, head, batch)) if head > passed else 0
    return VerifyReport(
        checked=checked,
        first_broken=broken[0] if broken else None,
        reason=broken[1] if broken else None,
        head=head,
        linked=linked,
        unverified=unverified,
    )


def catch_up_chain(engine: Any) -> str | None:
    """Link new events before a verification, when this process runs the chain.

    Returns why linking failed (a malformed or unreadable event at the tail), else None:
    the verification then covers what is linked and counts the rest as unverified."""
    runner = engine.runners.get(NAME)
    if runner is None or not (runner.owned or runner.try_own()):
        return None
    try:
        runner.catch_up()
    except (ProjectionStoppedError, ValueError, TypeError) as exc:
        return str(exc)
    return None
