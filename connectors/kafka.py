"""The Kafka publisher's sink: stored events -> topic ``cs.events`` (DESIGN §9, docs/events.md).

:class:`KafkaSink` is the side effect of the ``kafka_publisher_v1`` relay
(:class:`projections.relay.EventRelay`): it receives stored events (notifications) in log order,
turns each into its record with ``encode`` (:class:`events.envelope.EnvelopeEncoder`: the
versioned JSON envelope, keyed by customer id, with an ``event_id`` header), has them sent,
and returns only when the broker acknowledged every one of them. Any failure raises
:class:`KafkaPublishError`, so the relay keeps its checkpoint and re-sends the batch later
(at-least-once; consumers dedupe on ``event_id``).

Two processes, two cores: this one reads the log and encodes (``prepare``), the producer
process (:mod:`connectors.kafka_producer`: kafka-python's ``KafkaProducer``, its settings and
why, the partitioner) appends, sends and flushes. kafka-python encodes records in pure Python
under the GIL, so in one process its record encoding and sender thread and our envelope
encoding took turns on one core; now the relay encodes batch N+1 while the producer process
sends batch N (:class:`projections.relay.StagedSink`: N+1 is handed over only once N was
confirmed and checkpointed, so what is sent, and in which order, is what one batch at a time
sends).

- ``send`` pickles the batch's records (one list of ``(key, value, event_id)`` bytes tuples)
  and writes it to the producer process's socket; ``confirm`` waits for its answer (the
  broker acknowledged every record, or the error's type and message, raised here as
  :class:`KafkaPublishError`).
- The producer process is started on the first batch (a fresh interpreter,
  ``python -m connectors.kafka_producer``: never ``fork``, which is unsafe next to the threads
  of ``cs serve`` / ``cs worker``; not ``multiprocessing.Process``, whose ``spawn`` re-runs the
  parent's ``__main__`` (for ``cs``, the whole application) in the child), and kept.
- A producer process that dies, or does not answer within ``reply_timeout``, fails the batch
  in flight: it is killed, the relay backs off, and the next batch starts a new one. An error
  inside it (the broker refused or did not acknowledge) fails the batch and leaves it running:
  it rebuilds its producer for the next batch.
- ``close()`` (the relay's shutdown in ``cs serve``, ``cs worker`` and tests) closes the
  socket, which stops the producer process after it closed its producer, waits for it, and
  kills it if it has not exited within ``STOP_TIMEOUT_S``. If this process dies, the kernel
  closes the socket and the producer process stops the same way.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import structlog

from connectors.kafka_producer import PRODUCER_CONFIG, Answer, KafkaPublishError, key_hash
from events.envelope import Record

__all__ = ["PRODUCER_CONFIG", "KafkaPublishError", "KafkaSink", "key_hash"]

log = structlog.get_logger(__name__)

SEND_BUFFER_BYTES = 4 * 1024 * 1024
STOP_TIMEOUT_S = 5.0  # close(): how long the producer process may take to close its producer


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
        reply_timeout: float | None = None,
        **overrides: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.encode = encode
        self.flush_timeout = flush_timeout
        # The producer process's worst case for one batch: building its producer (the TCP
        # pre-check, bootstrap and metadata, 5 s each, twice when it is rebuilt without
        # idempotence) and then the flush.
        self.reply_timeout = flush_timeout + 30.0 if reply_timeout is None else reply_timeout
        self.config: dict[str, Any] = {**PRODUCER_CONFIG, "client_id": client_id, **overrides}
        self.idempotent: bool | None = None  # known once the producer process answered a batch
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._in_flight = False  # a batch was sent and not yet answered

    # ------------------------------------------------------------ the process
    @property
    def pid(self) -> int | None:
        """The producer process's id while one is running (benchmarks read its CPU time)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _start(self) -> Connection:
        ours, theirs = socket.socketpair()
        # Room for a whole batch (about 0.6 MB per 1,000 events; capped by net.core.wmem_max):
        # send() returns without waiting for the producer process to read it.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        conn = Connection(ours.detach())
        try:
            level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
            self._process = subprocess.Popen(
                [sys.executable, "-m", "connectors.kafka_producer", str(theirs.fileno()), str(os.getpid()), level],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stdout may be the MCP stdio channel: never written by the child
            )
        except BaseException:
            conn.close()
            raise
        finally:
            theirs.close()  # the child's end lives in the child only: its death ends our socket
        self._conn = conn
        log.info("kafka.producer_process_started", pid=self._process.pid)
        settings = dict(bootstrap=self.bootstrap, topic=self.topic, config=self.config, flush_timeout=self.flush_timeout)
        try:
            conn.send_bytes(pickle.dumps(settings, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:  # it exited at once
            raise self._failed(exc) from exc
        return conn

    def _stop(self, *, kill: bool) -> None:
        """Stop the producer process: close the socket (it closes its producer and exits),
        wait, kill it if it is stuck or if ``kill``; reap it either way."""
        process, conn = self._process, self._conn
        self._process, self._conn, self._in_flight = None, None, False
        if process is not None and kill:
            process.kill()
        if conn is not None:
            conn.close()
        if process is not None:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("kafka.producer_process_killed", pid=process.pid, after_s=STOP_TIMEOUT_S)
                process.kill()
                process.wait()

    def _failed(self, exc: BaseException | None = None) -> KafkaPublishError:
        """The producer process is gone (``exc``: how the socket failed) or stuck: it is killed
        and reaped; the batch in flight fails."""
        process = self._process
        self._stop(kill=True)
        if exc is None:
            error = f"no answer from the Kafka producer process within {self.reply_timeout:.0f}s"
        else:
            code = process.returncode if process is not None else None
            error = f"the Kafka producer process is gone: {type(exc).__name__} (exit code {code})"
        log.warning("kafka.producer_process_failed", error=error)
        return KafkaPublishError(error)

    # ---------------------------------------------------------------- the sink
    # A StagedSink (projections.relay): the relay encodes batch N+1 while batch N is being
    # published by the producer process, and sends N+1 only after N was confirmed.
    def __call__(self, batch: Sequence[Any]) -> None:
        self.send(self.prepare(batch))
        self.confirm()

    def prepare(self, batch: Sequence[Any]) -> list[Record]:
        """The records of a batch (encoding only: nothing is sent)."""
        encode = self.encode
        return [encode(notification) for notification in batch]

    def send(self, records: Sequence[Record]) -> None:
        """Hand the records to the producer process (started if there is none); ``confirm``
        waits for its answer."""
        if self._in_flight:  # the relay failed between send and confirm: that batch will be sent again
            try:
                self.confirm()  # only to read its answer
            except KafkaPublishError as exc:
                log.debug("kafka.unconfirmed_batch_failed", error=str(exc))
        payload = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        conn = self._conn if self._conn is not None else self._start()
        try:
            conn.send_bytes(payload)
        except OSError as exc:  # the process is gone (a broken or reset socket)
            raise self._failed(exc) from exc
        self._in_flight = True

    def confirm(self) -> None:
        """Return once the broker acknowledged every record sent; raise KafkaPublishError if any
        was not, or if the producer process died or did not answer within ``reply_timeout``."""
        conn = self._conn
        if not self._in_flight or conn is None:
            return
        try:
            if not conn.poll(self.reply_timeout):
                raise self._failed()
            answer: Answer = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError) as exc:  # it died: the socket ended or was reset
            raise self._failed(exc) from exc
        self._in_flight = False
        error, message, self.idempotent = answer
        if error == KafkaPublishError.__name__:
            raise KafkaPublishError(message)
        if error is not None:
            raise KafkaPublishError(f"{error}: {message}")

    def close(self) -> None:
        self._stop(kill=False)
