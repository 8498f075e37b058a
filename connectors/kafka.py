"""The Kafka publisher's sink: stored events -> topic ``cs.events`` (DESIGN §9, docs/events.md).

:class:`KafkaSink` is the side effect of the ``kafka_publisher_v1`` relay
(:class:`projections.relay.EventRelay`): it receives stored events (notifications) in log order,
turns each into its record with ``encode`` (:class:`events.envelope.EnvelopeEncoder`: the
versioned JSON envelope, keyed by customer id, with an ``event_id`` header), hands them to the
producer, flushes, and returns only when the broker acknowledged every one of them. Any failure
raises, so the relay keeps its checkpoint and re-sends the batch later (at-least-once;
consumers dedupe on ``event_id``).

The producer is confluent-kafka (librdkafka): queueing a record costs about 1 µs of Python
time and batching, checksums, the network and acknowledgements run in librdkafka's own
threads, outside the GIL. With kafka-python every ``send`` cost 15-20 µs of Python (record
encoding, size estimate, futures) on the relay's thread, about 60% of the publisher's time per
event once envelopes were read straight from the stored JSON (bench/README.md, kafka_publish).

Producer settings (librdkafka names), and why:

- ``acks=all``: a record counts as published only once every in-sync replica has it.
- ``enable.idempotence``: broker-side retries add no duplicates and keep order per partition
  with up to 5 requests in flight (librdkafka enforces the matching ``max.in.flight`` and
  ``retries``). Brokers since Kafka 0.11 (and Tansu) support it.
- ``partitioner=murmur2_random``: murmur2 of the key modulo the partition count, the Java
  client's default partitioner, as docs/events.md promises (every record has a key).
- ``linger.ms`` 50 and ``batch.size`` 1 MiB (under Kafka's default ``message.max.bytes``): the
  records of a relay batch (up to 1,000 events) leave in a few large produce requests; the
  relay flushes each batch right away, so the linger never delays one.
- ``socket.connection.setup.timeout.ms`` / ``request.timeout.ms`` 5 s, ``message.timeout.ms``
  10 s: a down broker fails a batch within 5-10 s instead of the defaults' minutes, and the
  relay backs off (writes never wait for any of this: the relay runs in its own thread).
- ``delivery.report.only.error``: librdkafka reports failed deliveries only (a Python call
  per failure, not per record); a flush that returns with nothing left and no failure
  reported means every record was acknowledged.
- librdkafka's own log lines go to structlog (``kafka.client``), not straight to stderr.
- The producer is created on first use, and dropped and recreated after any failure (a broker
  that restarted may have forgotten the idempotent producer's id).
- The relay prepares (encodes) batch N+1 while the broker acknowledges batch N, and hands it to
  the producer only once N was confirmed (:class:`projections.relay.StagedSink`): what is sent,
  and in which order, is what one batch at a time sends.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from events.envelope import Record

log = structlog.get_logger(__name__)

PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "partitioner": "murmur2_random",
    "linger.ms": 50,
    "batch.size": 1024 * 1024,
    "compression.type": "none",
    "socket.connection.setup.timeout.ms": 5_000,
    "request.timeout.ms": 5_000,
    "message.timeout.ms": 10_000,
    "retry.backoff.ms": 100,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 1_000,
    "delivery.report.only.error": True,
    "log.connection.close": False,
}
BOOTSTRAP_TIMEOUT_S = 5.0


class KafkaPublishError(RuntimeError):
    """A batch was not acknowledged by the broker; the relay will send it again."""


def _reachable(servers: Sequence[str], timeout: float) -> None:
    """Raise unless one bootstrap server accepts a TCP connection. A refused connection fails at
    once here, where the client would retry in the background until its timeouts."""
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


class _ClientLog:
    """librdkafka's log lines (syslog levels, delivered on the relay's thread by poll/flush) to structlog."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        message = fmt % args if args else fmt
        if level <= 3:
            log.error("kafka.client", message=message)
        elif level == 4:
            log.warning("kafka.client", message=message)
        elif level <= 6:
            log.info("kafka.client", message=message)
        else:
            log.debug("kafka.client", message=message)


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
        self.config: dict[str, Any] = {**PRODUCER_CONFIG, "client.id": client_id, **overrides}
        self.idempotent = bool(self.config.get("enable.idempotence"))
        self._producer: Any = None
        self._failures: list[Any] = []  # the current producer's failed deliveries

    # ----------------------------------------------------------------- producer
    def _new_producer(self) -> Any:
        from confluent_kafka import KafkaException, Producer  # imported here: only a configured publisher needs it

        servers = [s.strip() for s in self.bootstrap.split(",") if s.strip()]
        _reachable(servers, BOOTSTRAP_TIMEOUT_S)
        failures = self._failures = []  # this producer's failed deliveries

        def failed(error: Any, _message: Any) -> None:  # on this thread, from flush
            failures.append(error)

        producer = Producer({**self.config, "bootstrap.servers": ",".join(servers), "logger": _ClientLog(),
                             "on_delivery": failed})  # fmt: skip
        try:  # the topic's metadata (created on first use by the broker): fails within the timeout
            topic = producer.list_topics(self.topic, timeout=BOOTSTRAP_TIMEOUT_S).topics[self.topic]
        except KafkaException as exc:
            raise KafkaPublishError(f"no metadata for {self.topic}: {exc}") from exc
        if topic.error is not None and topic.error.retriable() is False:
            raise KafkaPublishError(f"topic {self.topic}: {topic.error}")
        log.info("kafka.producer_ready", bootstrap=self.bootstrap, topic=self.topic, idempotent=self.idempotent)
        return producer

    def producer(self) -> Any:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    def _discard(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.purge()  # what is still queued will be sent again by the relay
                producer.flush(0)
            except Exception as exc:  # dropping a broken producer: nothing more to do
                log.debug("kafka.close_failed", error=str(exc))
        self._failures = []  # the purged records' reports belong to the dropped producer

    # ---------------------------------------------------------------- the sink
    # A StagedSink (projections.relay): the relay encodes batch N+1 while librdkafka and the
    # broker acknowledge batch N, and sends N+1 only after N was confirmed.
    def __call__(self, batch: Sequence[Any]) -> None:
        self.send(self.prepare(batch))
        self.confirm()

    def prepare(self, batch: Sequence[Any]) -> list[Record]:
        """The records of a batch (encoding only: nothing is sent)."""
        encode = self.encode
        return [encode(notification) for notification in batch]

    def send(self, records: Sequence[Record]) -> None:
        """Queue the records in the producer (librdkafka sends them from its own threads)."""
        try:
            producer = self.producer()
            produce, topic = producer.produce, self.topic
            for key, value, event_id in records:
                try:
                    produce(topic, value, key, headers=[("event_id", event_id)])
                except BufferError:  # the client's queue is full: let deliveries drain it, then retry once
                    producer.flush(self.flush_timeout)
                    produce(topic, value, key, headers=[("event_id", event_id)])
        except Exception:
            self._discard()
            raise

    def confirm(self) -> None:
        """Return once the broker acknowledged every record sent; raise if any was not."""
        producer, failures = self._producer, self._failures
        try:
            left = producer.flush(self.flush_timeout) if producer is not None else 0
            if left:
                raise KafkaPublishError(f"{left} records not acknowledged within {self.flush_timeout:.0f}s")
            if failures:  # a failure drops the producer (below), and its list with it
                raise KafkaPublishError(f"{len(failures)} records failed: {failures[0]}")
        except Exception:
            self._discard()
            raise

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            left = producer.flush(1)  # normally nothing: every batch was flushed
            if left:
                log.warning("kafka.close_unflushed", records=left)
