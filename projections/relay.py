"""Checkpointed relays: forward every event, in log order, to a side effect (Kafka, ...).

A relay is not a projection: its sink acts on the outside world, so its checkpoint moves only
after the sink confirmed a batch (at-least-once; consumers dedupe on ``event_id``), a failing
sink is retried later with back-off instead of stopping anything, and ``cs rebuild`` never
touches it (a rebuild republishes nothing). Writes never wait for a relay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from projections.store import LogConsumer, ViewStore

log = structlog.get_logger(__name__)

Sink = Callable[[Sequence[Any]], None]
"""Receives stored events (the log's notifications: position, topic, originator, state) in log
order; returns once they are durable on the other side, raises if they are not. A sink decodes
what it needs itself (the Kafka sink reads the stored JSON without building domain events)."""


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

    def run_once(self) -> int:
        """Forward one batch after the checkpoint; return how many events went out."""
        start = self.checkpoint()
        batch = self.recorder.select_notifications(start=start, limit=self.batch_size, inclusive_of_start=False)
        if not batch:
            return 0
        self.sink(batch)
        with self.store.transaction() as tx:
            tx.move_checkpoint(self.name, start, batch[-1].id)
        return len(batch)

    def pump(self, max_batches: int = 100) -> int:
        """Forward what is there (bounded); on failure back off (0.5 s doubling to 30 s)."""
        if not self.owned or time.monotonic() < self._retry_at:
            return 0
        sent = 0
        try:
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
