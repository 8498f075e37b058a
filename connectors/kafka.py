"""The Kafka publisher's sink: stored events -> topic ``cs.events`` (DESIGN §9, docs/events.md).

:class:`KafkaSink` is the side effect of the ``kafka_publisher_v1`` relay
(:class:`projections.relay.EventRelay`): it receives stored events (notifications) in log order,
turns each into its record with ``encode`` (:class:`events.envelope.EnvelopeEncoder`: the
versioned JSON envelope, keyed by customer id, with an ``event_id`` header), sends them,
flushes, and returns only when the broker acknowledged every one of them. Any failure raises, so
the relay keeps its checkpoint and re-sends the batch later (at-least-once; consumers dedupe on
``event_id``).

Producer settings, and why:

- ``acks="all"``: a record counts as published only once every in-sync replica has it.
- idempotence left at kafka-python's default (on) and used when the broker supports it (Kafka
  >= 0.11, Tansu): broker-side retries then add no duplicates and keep order with 5 requests in
  flight. When the client reports it disabled, the producer is rebuilt with one request in
  flight so a retried batch can never overtake a later one (order per customer).
- ``max_block_ms`` / ``bootstrap_timeout_ms`` 5 s, ``request_timeout_ms`` 5 s,
  ``delivery_timeout_ms`` 10 s, ``retries`` 5: a down broker fails a batch within 5-10 s instead
  of the defaults' minute or more, and the relay backs off (writes never wait for any of this:
  the relay runs in its own thread).
- ``linger_ms`` 100 and ``batch_size`` 1 MiB (under Kafka's default ``message.max.bytes``): the
  records of a relay batch (up to 1,000 events) accumulate while they are appended (the
  client's sender thread mostly idles meanwhile instead of competing for the GIL: about 20%
  more events/s than linger 5 ms) and leave in a few large produce requests as soon as the
  last one is appended: :meth:`KafkaSink.send` ends with the first half of
  ``KafkaProducer.flush`` (mark every batch ready, wake the sender) and
  :meth:`KafkaSink.confirm` does the second (await every batch), so the linger never delays a
  batch and the broker acknowledges batch N while the relay encodes batch N+1.
- Records go straight to the producer's accumulator (:meth:`KafkaSink._appender`): the same
  append, batch and future ``KafkaProducer.send`` makes for a keyed record with an explicit
  partition, without the per-record checks and partitioner the relay's records never need
  (about half the cost per record); the partition is kafka-python's default (murmur2 of the
  key, memoised per key) and the topic's metadata is awaited once per batch. A record near
  ``max_request_size`` still takes ``send`` and its size check.
- The producer is created on first use, and closed and recreated after any failure (a broker
  that restarted may have forgotten the producer id).
- The relay prepares (encodes) batch N+1 while batch N is being acknowledged, and sends N+1
  only once N was confirmed (:class:`projections.relay.StagedSink`): what is sent, and in which
  order, is what one batch at a time sends.

Throughput needs the ``crc32c`` package (kafka-python's native CRC-32C for record batches):
without it the client checksums every batch in pure Python and publishing is about 4x slower.
A missing ``crc32c`` is logged as ``kafka.slow_crc32c`` when the producer starts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import structlog

from events.envelope import Record

log = structlog.get_logger(__name__)

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


@lru_cache(maxsize=65_536)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner hash (murmur2, positive), as the Java and Python clients compute it."""
    from kafka.partitioner.default import murmur2

    return murmur2(key) & 0x7FFFFFFF


@lru_cache(maxsize=1)
def _pinned_client() -> bool:
    """kafka-python 3.0.x (pyproject pins 3.0.12): the client whose producer internals
    :meth:`KafkaSink._appender` relies on."""
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


class KafkaSink:
    """Publishes relay batches to one topic; raises unless every record was acknowledged."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        encode: Callable[[Any], Record],
        *,
        client_id: str = "cs-publisher",
        flush_timeout: float = 30.0,
        **overrides: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.encode = encode
        self.flush_timeout = flush_timeout
        self.config: dict[str, Any] = {**PRODUCER_CONFIG, "client_id": client_id, **overrides}
        self.idempotent: bool | None = None  # known once a producer exists
        self._producer: Any = None
        self._futures: list[Any] = []  # of the records sent since the last confirm
        self._flush_begun: Any = None  # the producer whose flush send began and confirm awaits

    # ----------------------------------------------------------------- producer
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

    def _discard(self) -> None:
        producer, self._producer = self._producer, None
        self._futures, self._flush_begun = [], None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception as exc:  # closing a broken producer: nothing more to do
                log.debug("kafka.close_failed", error=str(exc))

    # ---------------------------------------------------------------- the sink
    # A StagedSink (projections.relay): the relay encodes batch N+1 while batch N is being
    # acknowledged, and sends N+1 only after N was confirmed.
    def __call__(self, batch: Sequence[Any]) -> None:
        self.send(self.prepare(batch))
        self.confirm()

    def prepare(self, batch: Sequence[Any]) -> list[Record]:
        """The records of a batch (encoding only: nothing is sent)."""
        encode = self.encode
        return [encode(notification) for notification in batch]

    def send(self, records: Sequence[Record]) -> None:
        """Append the records to the producer's batches (sent by its sender thread)."""
        try:
            producer = self.producer()
            partition_for = self._partitioner(producer)
            append = self._appender(producer)
            futures = self._futures
            if append is None:  # not the pinned client's accumulator: its public send, per record
                send, topic = producer.send, self.topic
                for key, value, event_id in records:
                    futures.append(
                        send(topic, key=key, value=value, headers=[("event_id", event_id)], partition=partition_for(key))
                    )
                return
            limit = producer.config["max_request_size"] - _RECORD_OVERHEAD
            send, topic = producer.send, self.topic
            for key, value, event_id in records:
                if len(key) + len(value) + len(event_id) > limit:  # near the limit: the client's checks
                    futures.append(send(topic, key=key, value=value, headers=[("event_id", event_id)]))
                else:
                    futures.append(append(partition_for(key), None, key, value, [("event_id", event_id)])[0])
            # The first half of KafkaProducer.flush (the second, awaiting every batch, is in
            # confirm): the batches leave now, while the relay encodes the next one, instead of
            # lingering until confirm.
            producer._accumulator.begin_flush()
            self._flush_begun = producer
            producer._sender.wakeup()
        except Exception:
            self._discard()
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
            and hasattr(producer, "_sender")
            and producer.max_usable_produce_magic(producer.config["api_version"]) == 2
            and not (manager is not None and manager.is_transactional())
        ):
            return accumulator.append
        return None

    def confirm(self) -> None:
        """Return once the broker acknowledged every record sent; raise if any was not."""
        futures, self._futures = self._futures, []
        try:
            begun, self._flush_begun = self._flush_begun, None
            if begun is not None and begun is self._producer:
                begun._accumulator.await_flush_completion(timeout=self.flush_timeout)
            elif self._producer is not None:
                self._producer.flush(timeout=self.flush_timeout)
            for future in futures:
                if not future.is_done:
                    raise KafkaPublishError(f"no acknowledgement within {self.flush_timeout:.0f}s")
                if future.failed():
                    raise KafkaPublishError(f"{type(future.exception).__name__}: {future.exception}")
        except Exception:
            self._discard()
            raise

    def close(self) -> None:
        self._discard()
