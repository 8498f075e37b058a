"""EventRelay.pump with a StagedSink (projections/relay.py): batch N+1 is read and prepared while
batch N is confirmed, but handed over only after N was confirmed and checkpointed; a failed
confirmation leaves the checkpoint after the last confirmed batch. Real store and log (SQLite
and PostgreSQL); the sink is an in-memory side effect that records what the relay asked of it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from events.commands import CommandMeta
from mcp_server.services import Services
from projections.relay import EventRelay, StagedSink

META = CommandMeta(actor="test", source="pytest", source_id="relay")


class RecordingSink:
    """Keeps every position it was sent; notes each step with the relay's checkpoint at that time;
    its ``fail_confirm``-th confirmation raises (as a broker that did not acknowledge)."""

    def __init__(self, relay_checkpoint: Any, fail_confirm: int | None = None, poison: int | None = None) -> None:
        self.relay_checkpoint = relay_checkpoint
        self.fail_confirm = fail_confirm
        self.poison = poison  # a position whose event cannot be encoded
        self.steps: list[tuple[str, int, int]] = []  # (step, first position of the batch or -1, checkpoint)
        self.in_flight: list[int] = []
        self.delivered: list[int] = []
        self.confirms = 0

    def __call__(self, batch: Sequence[Any]) -> None:
        self.send(self.prepare(batch))
        self.confirm()

    def prepare(self, batch: Sequence[Any]) -> list[int]:
        positions = [n.id for n in batch]
        self.steps.append(("prepare", positions[0], self.relay_checkpoint()))
        if self.poison in positions:
            raise TypeError(f"cannot encode the event at {self.poison}")
        return positions

    def send(self, prepared: list[int]) -> None:
        self.steps.append(("send", prepared[0], self.relay_checkpoint()))
        self.in_flight += prepared

    def confirm(self) -> None:
        self.confirms += 1
        self.steps.append(("confirm", -1, self.relay_checkpoint()))
        if self.confirms == self.fail_confirm:
            self.in_flight = []
            raise RuntimeError("not acknowledged")
        self.delivered += self.in_flight
        self.in_flight = []


def relay_with(services: Services, **failures: int) -> tuple[EventRelay, RecordingSink]:
    relay = EventRelay("test_relay_v1", lambda batch: None, services.store, services.app.recorder, batch_size=10)
    sink = RecordingSink(relay.checkpoint, **failures)
    relay.sink = sink
    relay.setup()
    assert relay.try_own()
    return relay, sink


def write_events(services: Services, customers: int) -> int:
    for i in range(customers):
        services.app.register_customer({"external_key": f"relay-{i:02d}", "name": f"Relay {i}"}, META)
    return services.app.last_position()


def test_next_batch_is_prepared_during_the_confirmation_but_sent_after_the_checkpoint(services: Services) -> None:
    head = write_events(services, 35)
    relay, sink = relay_with(services)
    assert isinstance(sink, StagedSink)
    assert relay.pump() == head == 35
    assert relay.checkpoint() == head
    assert sink.delivered == list(range(1, head + 1))  # every event once, in log order
    firsts = [1, 11, 21, 31]
    assert sink.steps == [
        ("prepare", 1, 0), ("send", 1, 0),
        ("prepare", 11, 0), ("confirm", -1, 0), ("send", 11, 10),  # 11.. prepared before 1..10 confirmed, sent after
        ("prepare", 21, 10), ("confirm", -1, 10), ("send", 21, 20),
        ("prepare", 31, 20), ("confirm", -1, 20), ("send", 31, 30),
        ("confirm", -1, 30),  # the partial last batch: nothing more to read
    ]  # fmt: skip
    assert [first for step, first, _ in sink.steps if step == "send"] == firsts
    assert relay.pump() == 0  # at the head


def test_a_failed_confirmation_keeps_the_checkpoint_and_sends_nothing_after_it(services: Services) -> None:
    head = write_events(services, 50)
    relay, sink = relay_with(services, fail_confirm=3)
    assert relay.pump() == 0  # the failure is reported, never raised
    assert relay.last_error == "RuntimeError: not acknowledged"
    assert relay.checkpoint() == 20  # batches 1..10 and 11..20 confirmed; 21..30 was not
    sent = [first for step, first, _ in sink.steps if step == "send"]
    assert sent == [1, 11, 21]  # 31.. was prepared during the failed confirmation, never sent
    assert sink.steps[-2:] == [("prepare", 31, 20), ("confirm", -1, 20)]

    deadline = time.monotonic() + 10  # the first back-off is 0.5 s; pump does nothing before it is over
    while not (resumed := relay.pump()):
        assert time.monotonic() < deadline, "the relay did not resume after its back-off"
        time.sleep(0.05)
    assert resumed == head - 20 and relay.last_error is None
    assert relay.checkpoint() == head
    assert sink.delivered == list(range(1, 21)) + list(range(21, head + 1))  # resumed at 21, each once


def test_a_poison_event_fails_after_the_batch_before_it_was_confirmed(services: Services) -> None:
    write_events(services, 50)
    relay, sink = relay_with(services, poison=25)
    assert relay.pump() == 0
    assert relay.last_error == "TypeError: cannot encode the event at 25"
    assert relay.checkpoint() == 20  # 11..20 was in flight when 21..30 failed to encode: confirmed first
    assert sink.steps[-3:] == [("send", 11, 10), ("prepare", 21, 10), ("confirm", -1, 10)]
    assert sink.delivered == list(range(1, 21))

    steps = len(sink.steps)
    deadline = time.monotonic() + 10  # after the back-off the relay tries 21.. again, and only that
    while len(sink.steps) == steps:
        assert time.monotonic() < deadline, "the relay did not retry after its back-off"
        relay.pump()
        time.sleep(0.05)
    assert sink.steps[steps:] == [("prepare", 21, 20)]
    assert relay.checkpoint() == 20 and sink.delivered == list(range(1, 21))  # nothing sent twice
