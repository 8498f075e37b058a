"""Checkpointed relays: forward every event, in log order, to a side effect (Kafka, ...).

A relay is not a projection: its sink acts on the outside world, so its checkpoint moves only
after the sink confirmed a batch (at-least-once; consumers dedupe on ``event_id``), a failing
sink is retried later with back-off instead of stopping anything, and ``cs rebuild`` never
touches it (a rebuild republishes nothing). Writes never wait for a relay.

A :class:`StagedSink` lets :meth:`EventRelay.pump` overlap work without weakening any of that:
batch N+1 is read from the log and prepared (encoded) while the other side acknowledges batch
N, and handed over only after N was confirmed and the checkpoint moved past it. What leaves the
process, and in which order, is exactly what one batch at a time would send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import structlog

from projections.store import LogConsumer, ViewStore

log = structlog.get_logger(__name__)

Sink = Callable[[Sequence[Any]], None]
"""Receives stored events (the log's notifications: position, topic, originator, state) in log
order; returns once they are durable on the other side, raises if they are not. A sink decodes
what it needs itself (the Kafka sink reads the stored JSON without building domain events)."""


@runtime_checkable
class StagedSink(Protocol):
    """A sink whose call splits in three steps (``sink(batch)`` is ``send(prepare(batch))`` then
    ``confirm()``), so the relay can prepare the next batch while the previous one is confirmed."""

    def __call__(self, batch: Sequence[Any]) -> None: ...

    def prepare(self, batch: Sequence[Any]) -> Any:
        """The CPU work for a batch (no side effect): may run while an earlier batch is in flight."""
        ...

    def send(self, prepared: Any) -> None:
        """Hand a prepared batch over (need not wait for the other side)."""
        ...

    def confirm(self) -> None:
        """Return once everything sent is durable on the other side; raise if it is not."""
        ...


class EventRelay(LogConsumer):
    def __init__(self, name: str, sink: Sink, store: ViewStore, recorder: Any, *, batch_size: int = 1000) -> None:
        super().__init__(name, store)
        self.sink = sink
        self.recorder = recorder
        self.batch_size = batch_size
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._backoff = 0.5

    def setup(self) -> None:
        self.store.ensure_checkpoint(self.name)

    def _read(self, after: int) -> Sequence[Any]:
        return self.recorder.select_notifications(start=after, limit=self.batch_size, inclusive_of_start=False)

    def _confirmed(self, start: int, batch: Sequence[Any]) -> None:
        with self.store.transaction() as tx:
            tx.move_checkpoint(self.name, start, batch[-1].id)

    def run_once(self) -> int:
        """Forward one batch after the checkpoint; return how many events went out."""
        start = self.checkpoint()
        batch = self._read(start)
        if not batch:
            return 0
        self.sink(batch)
        self._confirmed(start, batch)
        return len(batch)

    def run_staged(self, sink: StagedSink, max_batches: int) -> int:
        """Forward up to ``max_batches`` full batches (and a last partial one) after the
        checkpoint: batch N+1 is read and prepared while ``sink.confirm()`` waits for N, sent only
        once N is confirmed and checkpointed. A failure leaves the checkpoint after the last
        confirmed batch; the prepared one is dropped. A batch that cannot be prepared (a
        poison event) fails only after the one before it was confirmed, so retrying it never
        sends that one again."""
        start = self.checkpoint()
        batch = self._read(start)
        sent = 0
        if batch:
            sink.send(sink.prepare(batch))
        while batch:
            full = len(batch) == self.batch_size and sent // self.batch_size + 1 < max_batches
            following = self._read(batch[-1].id) if full else ()
            unprepared: Exception | None = None
            try:
                prepared = sink.prepare(following) if following else None
            except Exception as exc:  # raised once the batch in flight is confirmed
                unprepared = exc
            sink.confirm()
            self._confirmed(start, batch)
            sent += len(batch)
            if unprepared is not None:
                raise unprepared
            start, batch = batch[-1].id, following
            if batch:
                sink.send(prepared)
        return sent

    def pump(self, max_batches: int = 100) -> int:
        """Forward what is there (bounded); on failure back off (0.5 s doubling to 30 s)."""
        if not self.owned or time.monotonic() < self._retry_at:
            return 0
        sent = 0
        try:
            if isinstance(self.sink, StagedSink):
                sent = self.run_staged(self.sink, max_batches)
            else:
                for _ in range(max_batches):
                    done = self.run_once()
                    sent += done
                    if done < self.batch_size:
                        break
        except Exception as exc:  # the sink or its broker is down: never block writes, retry later
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = time.monotonic() + self._backoff
            log.warning("relay.failed", relay=self.name, error=self.last_error, retry_in_s=self._backoff)
            self._backoff = min(self._backoff * 2, 30.0)
            return sent
        self.last_error, self._backoff = None, 0.5
        return sent
