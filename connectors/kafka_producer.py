"""The Kafka publisher's producer process: kafka-python's ``KafkaProducer`` on a core of its own.

:class:`connectors.kafka.KafkaSink` (the relay's sink, in the application's process) reads and
encodes; this process, started by it as ``python -m connectors.kafka_producer FD PARENT_PID
LEVEL``, owns the producer. Over the socket ``FD`` (a :mod:`multiprocessing.connection`
``Connection``: length-prefixed messages) it receives, pickled:

1. once, the producer's settings (bootstrap, topic, producer config, flush timeout);
2. then batches: a list of ``(key, value, event_id)`` records each. A batch is appended to the
   producer, flushed, and answered with ``(error type, message, idempotent)`` (type and message
   ``None`` when the broker acknowledged every record), before the next one is read. One
   process, batches in order: per-partition order is what one producer in one process sends.

It imports kafka-python, structlog, this module and two small ones (``events.collector``,
``mcp_server.logs``), not the application. It logs with structlog to stderr (JSON, at the
parent's level); its stdout is never used (in ``cs serve`` the parent's stdout is the MCP stdio
channel). It stops when the socket reaches its end (the parent closed it, or died: the kernel
closes a dead process's sockets) or when its parent is no longer ``PARENT_PID``, closing its
producer first; it ignores SIGINT (a Ctrl-C in a terminal reaches the whole process group: the
parent decides when this process stops).

Producer settings, and why:

- ``acks="all"``: a record counts as published only once every in-sync replica has it.
- idempotence left at kafka-python's default (on) and used when the broker supports it (Kafka
  >= 0.11, Tansu): broker-side retries then add no duplicates and keep order with 5 requests in
  flight. When the client reports it disabled, the producer is rebuilt with one request in
  flight so a retried batch can never overtake a later one (order per customer).
- ``max_block_ms`` / ``bootstrap_timeout_ms`` 5 s, ``request_timeout_ms`` 5 s,
  ``delivery_timeout_ms`` 10 s, ``retries`` 5: a down broker fails a batch within 5-10 s instead
  of the defaults' minute or more, and the relay backs off (writes never wait for any of this:
  the relay runs in its own thread, and the producer in this process).
- ``linger_ms`` 100 and ``batch_size`` 1 MiB (under Kafka's default ``message.max.bytes``): the
  records of a relay batch (up to 1,000 events) accumulate while they are appended (the
  client's sender thread mostly idles meanwhile instead of competing for the GIL) and leave in
  a few large produce requests as soon as the last one is appended (``KafkaProducer.flush``),
  so the linger never delays a batch.
- Records go straight to the producer's accumulator (:meth:`Producer._appender`): the same
  append, batch and future ``KafkaProducer.send`` makes for a keyed record with an explicit
  partition, without the per-record checks and partitioner the relay's records never need
  (about half the cost per record); the partition is kafka-python's default (murmur2 of the
  key, memoised per key) and the topic's metadata is awaited once per batch. A record near
  ``max_request_size`` still takes ``send`` and its size check.
- The producer is created on the first batch, and closed and recreated after any failure (a
  broker that restarted may have forgotten the producer id).

Throughput needs the ``crc32c`` package (kafka-python's native CRC-32C for record batches):
without it the client checksums every batch in pure Python and publishing is about 4x slower.
A missing ``crc32c`` is logged as ``kafka.slow_crc32c`` when the producer starts.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

import structlog

from events.collector import collector_paused

log = structlog.get_logger("connectors.kafka_producer")

PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 100,
    "batch_size": 1024 * 1024,
    "max_block_ms": 5_000,
    "bootstrap_timeout_ms": 5_000,
    "request_timeout_ms": 5_000,
    "delivery_timeout_ms": 10_000,
    "retries": 5,
    "retry_backoff_ms": 100,
    "reconnect_backoff_ms": 50,
    "reconnect_backoff_max_ms": 1_000,
}

Record = tuple[bytes, bytes, bytes]  # key, value, event_id header (events.envelope.Record)
Answer = tuple[str | None, str | None, bool | None]  # error type, message, idempotent

PARENT_CHECK_S = 1.0  # how often an idle process checks that its parent is still there


@lru_cache(maxsize=65_536)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner hash (murmur2, positive), as the Java and Python clients compute it."""
    from kafka.partitioner.default import murmur2

    return murmur2(key) & 0x7FFFFFFF


@lru_cache(maxsize=1)
def _pinned_client() -> bool:
    """kafka-python 3.0.x (pyproject pins 3.0.12): the client whose producer internals
    :meth:`Producer._appender` relies on."""
    from kafka import __version__

    return __version__.startswith("3.0.")


_RECORD_OVERHEAD = 512  # bytes: more than a v2 batch header + record overhead + varints + header key


class KafkaPublishError(RuntimeError):
    """A batch was not acknowledged by the broker; the relay will send it again."""


def _reachable(servers: Sequence[str], timeout: float) -> None:
    """Raise unless one bootstrap server accepts a TCP connection. A refused connection fails at
    once here, where kafka-python would retry until its bootstrap timeout and then leak the
    sockets of the producer it could not finish building."""
    errors = []
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not port.isdigit():  # "host" alone: Kafka's default port
            host, port = server, "9092"
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {exc}")
    raise KafkaPublishError("no Kafka bootstrap server reachable: " + "; ".join(errors))


class Producer:
    """Publishes batches of records to one topic; raises unless every record was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, config: dict[str, Any], flush_timeout: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.config = dict(config)
        self.flush_timeout = flush_timeout
        self.idempotent: bool | None = None  # known once a producer exists
        self._producer: Any = None

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer  # imported here: only a configured publisher needs it
        from kafka.record import util as record_util

        if getattr(record_util, "crc32c_c", None) is None and self.idempotent is None:  # once
            log.warning("kafka.slow_crc32c", fix="pip install crc32c (about 4x faster publishing)")

        servers = [s.strip() for s in self.bootstrap.split(",") if s.strip()]
        _reachable(servers, self.config["bootstrap_timeout_ms"] / 1000)
        producer = KafkaProducer(bootstrap_servers=servers, **self.config)
        self.idempotent = bool(producer.config["enable_idempotence"])
        if not self.idempotent and self.config.get("max_in_flight_requests_per_connection", 5) > 1:
            # No idempotence on this broker: one request in flight keeps retried batches in order.
            producer.close(timeout=1)
            self.config["max_in_flight_requests_per_connection"] = 1
            producer = KafkaProducer(bootstrap_servers=servers, **self.config)
        log.info("kafka.producer_ready", bootstrap=self.bootstrap, topic=self.topic, idempotent=self.idempotent)
        return producer

    def producer(self) -> Any:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception as exc:  # closing a broken producer: nothing more to do
                log.debug("kafka.close_failed", error=str(exc))

    def publish(self, records: Sequence[Record]) -> None:
        """Append the records, flush, and return once the broker acknowledged every one of them.
        Any failure closes the producer (the next batch builds a new one) and raises.

        The cyclic collector is paused meanwhile: the batch allocates a future per record, each
        in a cycle with its batch's produce future, all alive until the broker answered, so
        collections during the batch free nothing and cost 15-35% of this process's CPU; the
        batch's cycles are collected once it is over."""
        with collector_paused():
            self._publish(records)

    def _publish(self, records: Sequence[Record]) -> None:
        try:
            producer = self.producer()
            partition_for = self._partitioner(producer)
            append = self._appender(producer)
            send, topic = producer.send, self.topic
            if append is None:  # not the pinned client's accumulator: its public send, per record
                futures = [
                    send(topic, key=key, value=value, headers=[("event_id", event_id)], partition=partition_for(key))
                    for key, value, event_id in records
                ]
            else:
                limit = producer.config["max_request_size"] - _RECORD_OVERHEAD
                futures = []
                for key, value, event_id in records:
                    if len(key) + len(value) + len(event_id) > limit:  # near the limit: the client's checks
                        futures.append(send(topic, key=key, value=value, headers=[("event_id", event_id)]))
                    else:
                        futures.append(append(partition_for(key), None, key, value, [("event_id", event_id)])[0])
            producer.flush(timeout=self.flush_timeout)  # every batch ready now (no linger), then awaited
            for future in futures:
                if not future.is_done:
                    raise KafkaPublishError(f"no acknowledgement within {self.flush_timeout:.0f}s")
                if future.failed():
                    raise KafkaPublishError(f"{type(future.exception).__name__}: {future.exception}")
        except Exception:
            self.close()
            raise

    def _partitioner(self, producer: Any) -> Callable[[bytes], Any]:
        """key -> its partition as kafka-python's DefaultPartitioner picks it (murmur2 of the key
        modulo the partition count, into the sorted partition ids), with the hash memoised per
        key; a TopicPartition when records go straight to the accumulator, else the id. The
        topic's metadata is awaited once per batch, not once per record."""
        from kafka.structs import TopicPartition

        partitions = sorted(producer.partitions_for(self.topic))
        count = len(partitions)
        if self._appender(producer) is None:
            return lambda key: partitions[key_hash(key) % count]
        tps = [TopicPartition(self.topic, p) for p in partitions]
        return lambda key: tps[key_hash(key) % count]

    @staticmethod
    def _appender(producer: Any) -> Callable[..., Any] | None:
        """The producer's ``RecordAccumulator.append`` when records may go straight to it, else None.

        ``KafkaProducer.send`` spends about 40% of its time per record on what the relay's records
        never need: serializers (ours are bytes already), header type checks (ours are built
        here), the partitioner (chosen above), the size estimate (a record near
        ``max_request_size`` still takes ``send``), the sticky-partition retry (keyed records are
        never sticky), and a debug log line whose arguments are formatted for every record. What
        is left is exactly what ``send`` does for a keyed record with an explicit partition on a
        non-transactional producer speaking record format v2: append to the partition's batch
        (the same future, the same bytes). Only for the pinned kafka-python (3.0.x), whose
        accumulator this is; any other producer keeps ``send``."""
        accumulator = getattr(producer, "_accumulator", None)
        manager = getattr(producer, "_transaction_manager", None)
        if (
            _pinned_client()
            and accumulator is not None
            and producer.max_usable_produce_magic(producer.config["api_version"]) == 2
            and not (manager is not None and manager.is_transactional())
        ):
            return accumulator.append
        return None


def serve(conn: Connection, parent_pid: int) -> None:
    """Answer batches until the parent closes the socket or is gone."""
    producer = Producer(**pickle.loads(conn.recv_bytes()))
    log.info("kafka.producer_process_ready", pid=os.getpid(), parent_pid=parent_pid, topic=producer.topic)
    try:
        while True:
            if not conn.poll(PARENT_CHECK_S):
                if os.getppid() != parent_pid:  # orphaned (the socket should have ended, but be sure)
                    log.warning("kafka.producer_orphaned", parent_pid=parent_pid)
                    return
                continue
            try:
                records: list[Record] = pickle.loads(conn.recv_bytes())
            except EOFError:  # the parent closed the socket (close()) or died
                return
            try:
                producer.publish(records)
                answer: Answer = (None, None, producer.idempotent)
            except Exception as exc:
                answer = (type(exc).__name__, str(exc), producer.idempotent)
            conn.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        producer.close()


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, parent_pid, level = int(argv[0]), int(argv[1]), argv[2]
    from mcp_server.logs import configure_logging  # structlog only: the app is not imported

    configure_logging(level)
    conn = Connection(fd)
    try:
        serve(conn, parent_pid)
    except (EOFError, OSError) as exc:  # the parent went away mid-answer
        log.info("kafka.producer_parent_gone", error=type(exc).__name__)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
