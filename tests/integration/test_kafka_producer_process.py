"""The Kafka publisher's producer process (connectors/kafka.py, connectors/kafka_producer.py)
against a real Kafka-protocol broker: a producer process that is killed, stuck, or whose
parent dies; errors crossing the process boundary; no process left behind. The relay is
driven by the test (``pump``) except where the engine's relay thread runs as in ``cs serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka import KafkaPublishError, KafkaSink
from events.commands import CommandMeta
from events.settings import Settings
from mcp_server.services import open_services
from projections.relay import EventRelay
from tests.integration.test_kafka_publisher import (  # noqa: F401  (the module's broker and warnings fixtures)
    _quiet_kafka_python,
    broker,
    kafka_settings,
    logged_envelopes,
    publisher,
    wait_until,
    write_history,
)
from tests.support.kafka import KafkaBroker, free_port, read_topic

REPO = Path(__file__).resolve().parents[2]


def process_state(pid: int) -> str | None:
    """The state letter of a process (``Z``: exited, not yet reaped), None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def exited(pid: int) -> bool:
    return process_state(pid) in (None, "Z")


def retry_after_backoff(relay: EventRelay, max_batches: int = 1000) -> int:
    """``pump`` until the relay's back-off is over and it sends something (bounded)."""
    sent: list[int] = []
    wait_until(lambda: sent.append(relay.pump(max_batches)) or sent[-1] > 0, 15, "the relay resumed after its back-off")
    return sent[-1]


def assert_everything_delivered_in_order(records: list[Any], expected: list[dict[str, Any]]) -> int:
    """Every logged event is on the topic at least once, and the first copies of each customer's
    events are in log order (partition by partition, offsets in order). Returns the duplicates."""
    envelopes = [json.loads(r.value) for r in records]
    by_position = {e["position"]: e for e in expected}
    assert {e["position"] for e in envelopes} == set(by_position)
    assert all(e == by_position[e["position"]] for e in envelopes)
    first: dict[str | None, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for envelope in envelopes:
        if envelope["event_id"] not in seen:
            seen.add(envelope["event_id"])
            first[envelope["customer_id"]].append(envelope["position"])
    for positions in first.values():
        assert positions == sorted(positions)
    return len(envelopes) - len(seen)


def test_a_killed_producer_process_fails_the_batch_and_a_new_one_publishes_everything(
    tmp_path: Path, broker: KafkaBroker
) -> None:
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=20, tag="killed")
        relay = publisher(svc)
        relay.batch_size = 10
        sink = relay.sink
        assert isinstance(sink, KafkaSink)
        assert relay.pump(max_batches=2) == 20 and relay.checkpoint() == 20
        first = sink.pid
        assert first is not None

        os.kill(first, signal.SIGKILL)  # between two batches of the stream
        wait_until(lambda: process_state(first) == "Z", 10, "the producer process dead")
        assert relay.pump() == 0  # the next batch fails: nothing is checkpointed
        assert relay.last_error is not None
        assert relay.last_error.startswith("KafkaPublishError: the Kafka producer process is gone: "), relay.last_error
        assert relay.last_error.endswith(" (exit code -9)"), relay.last_error
        assert relay.checkpoint() == 20
        assert process_state(first) is None  # reaped, not left as a zombie
        assert sink.pid is None

        # In flight: the process stops before it reads the batch, and dies before answering.
        assert retry_after_backoff(relay, max_batches=1) == 10 and relay.checkpoint() == 30
        second = sink.pid
        assert second is not None and second != first
        head = svc.app.last_position()
        os.kill(second, signal.SIGSTOP)
        batch = svc.app.recorder.select_notifications(start=relay.checkpoint(), limit=10, inclusive_of_start=False)
        sink.send(sink.prepare(batch))
        os.kill(second, signal.SIGKILL)
        with pytest.raises(KafkaPublishError, match=r"^the Kafka producer process is gone: \w+ \(exit code -9\)$"):
            sink.confirm()
        assert process_state(second) is None

        wait_until(lambda: relay.pump(max_batches=1000) > 0 and relay.checkpoint() == head, 15, "the relay at the head")
        assert relay.last_error is None
        third = sink.pid
        assert third is not None and third not in (first, second)
        expected = logged_envelopes(svc)
        records = read_topic(broker.bootstrap, settings.kafka_topic)
    assert exited(third)  # open_services closed the sink
    assert_everything_delivered_in_order(records, expected)


def test_killing_the_producer_process_mid_stream_under_the_relay_thread(tmp_path: Path, broker: KafkaBroker) -> None:
    """The engine's relay thread (as in ``cs serve``) streams a backlog in small batches; the
    producer process is killed once the stream is under way. A new process takes over, the
    relay reaches the head, and every event is on the topic at least once, in order per customer."""
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=150, tag="stream")
        relay = publisher(svc)
        relay.batch_size = 5
        head = svc.app.last_position()
        assert head >= 150 * 4
        sink = relay.sink
        assert isinstance(sink, KafkaSink)
        svc.engine.start()
        wait_until(lambda: relay.checkpoint() > 0, 30, "the stream under way")
        killed = sink.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: relay.checkpoint() == head, 60, "the relay at the head after the kill")
        assert sink.pid not in (None, killed)  # the killed process failed a batch; a new one took over
        assert process_state(killed) is None
        expected = logged_envelopes(svc)
        records = read_topic(broker.bootstrap, settings.kafka_topic)
    assert_everything_delivered_in_order(records, expected)


def test_a_stuck_producer_process_is_killed_after_the_reply_timeout(tmp_path: Path, broker: KafkaBroker) -> None:
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=4, tag="stuck")
        relay = publisher(svc)
        encode = relay.sink.encode  # type: ignore[attr-defined]
        sink = KafkaSink(settings.kafka_bootstrap, settings.kafka_topic, encode, reply_timeout=2.0)
        relay.sink = sink
        batch = svc.app.recorder.select_notifications(start=1, limit=3)
        try:
            sink(batch)  # the process is up and publishing
            stuck = sink.pid
            assert stuck is not None
            os.kill(stuck, signal.SIGSTOP)
            assert relay.pump() == 0
            assert relay.last_error == "KafkaPublishError: no answer from the Kafka producer process within 2s"
            assert relay.checkpoint() == 0
            assert process_state(stuck) is None  # killed and reaped
            assert retry_after_backoff(relay) == svc.app.last_position()
            expected = logged_envelopes(svc)
        finally:
            sink.close()
        records = read_topic(broker.bootstrap, settings.kafka_topic)
    assert assert_everything_delivered_in_order(records, expected) == len(batch)  # the first batch, sent twice


def test_a_batch_never_confirmed_does_not_answer_for_the_next_one(tmp_path: Path, broker: KafkaBroker) -> None:
    """If the relay fails between ``send`` and ``confirm`` (reading the log, say), the batch in
    flight is never confirmed and will be sent again; the next ``send`` first takes its answer,
    so ``confirm`` answers for the batch just sent. Here the unconfirmed batch fails in the
    producer process (a record over ``max_request_size``) and the next one is acknowledged."""
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        meta = CommandMeta(actor="test", source="pytest", source_id="unconfirmed")
        svc.app.register_customer({"external_key": "big", "name": "B" * 200, "arr": 1.0}, meta)
        svc.app.update_customer("big", {"arr": 2.0}, meta)
        encode = publisher(svc).sink.encode  # type: ignore[attr-defined]
        batch = svc.app.recorder.select_notifications(start=1, limit=10)
        sizes = {n.id: len(encode(n)[1]) for n in batch}
        limit = max(sizes.values()) - 50
        small = [n for n in batch if sizes[n.id] < limit - 100]
        assert small and len(small) < len(batch)
        sink = KafkaSink(settings.kafka_bootstrap, settings.kafka_topic, encode, max_request_size=limit)
        try:
            sink.send(sink.prepare(batch))  # never confirmed: the producer process answers an error
            sink.send(sink.prepare(small))
            sink.confirm()  # the answer for `small`: acknowledged
        finally:
            sink.close()
        records = read_topic(broker.bootstrap, settings.kafka_topic)
    assert {n.id for n in small} <= {json.loads(r.value)["position"] for r in records}


def test_close_leaves_no_producer_process(tmp_path: Path, broker: KafkaBroker) -> None:
    settings = kafka_settings(tmp_path, broker.bootstrap)
    with open_services(settings) as svc:
        write_history(svc, customers=2, tag="close")
        relay = publisher(svc)
        sink = relay.sink
        assert isinstance(sink, KafkaSink)
        assert sink.pid is None  # started by the first batch
        assert relay.pump() == svc.app.last_position()
        pid = sink.pid
        assert pid is not None and process_state(pid) not in (None, "Z")
        sink.close()
        assert process_state(pid) is None and sink.pid is None
        write_history(svc, customers=1, tag="again")  # a closed sink starts a new process when used again
        assert relay.pump() > 0
        again = sink.pid
        assert again is not None and again != pid
    assert process_state(again) is None  # open_services closes the relay's sink


def test_an_unreachable_broker_fails_the_batch_with_the_producer_processs_message(tmp_path: Path) -> None:
    port = free_port()
    with open_services(Settings(data_dir=tmp_path / "data", kafka_bootstrap=f"127.0.0.1:{port}")) as svc:
        write_history(svc, customers=1, tag="down")
        relay = publisher(svc)
        assert relay.pump() == 0
        assert relay.last_error is not None
        reason = f"KafkaPublishError: no Kafka bootstrap server reachable: 127.0.0.1:{port}: "
        assert relay.last_error.startswith(reason), relay.last_error
        assert "Connection refused" in relay.last_error
        assert relay.checkpoint() == 0
        assert relay.sink.pid is not None  # type: ignore[attr-defined]  # still up: it answered the error


PARENT = textwrap.dedent(
    """
    import sys
    from connectors.kafka import KafkaPublishError, KafkaSink
    from mcp_server.logs import configure_logging

    configure_logging("INFO")
    sink = KafkaSink(sys.argv[1], "cs.events", lambda n: n)
    try:
        sink([(b"key", b"value", b"event-id")])
    except KafkaPublishError as exc:
        print(sink.pid, exc, flush=True)
    sys.stdin.read()  # until the test kills this process
    """
)


def test_the_producer_process_exits_when_its_parent_dies_and_never_writes_stdout() -> None:
    """A parent that is SIGKILLed (no close()): its producer process notices and exits. It logs
    JSON to stderr; stdout (the MCP stdio channel in ``cs serve``) holds only what the parent wrote."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, f"127.0.0.1:{free_port()}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().decode()
        pid_text, _, error = line.partition(" ")
        assert error.startswith("no Kafka bootstrap server reachable: "), line
        child = int(pid_text)
        assert process_state(child) not in (None, "Z")
        parent.kill()
        parent.wait(10)
        wait_until(lambda: exited(child), 15, "the producer process gone after its parent")
        out, err = parent.communicate(timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
    assert out == b""  # nothing more than the line read above
    logged = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    ready = [entry for entry in logged if entry["event"] == "kafka.producer_process_ready"]
    assert ready and ready[0]["pid"] == child and ready[0]["parent_pid"] == parent.pid


def test_the_producer_process_imports_kafka_python_and_not_the_application() -> None:
    """What the producer process imports (its module and the logging set-up it calls), in a fresh
    interpreter: kafka-python and structlog, none of the application's packages."""
    code = (
        "import sys, connectors.kafka_producer, mcp_server.logs;"
        "import kafka.producer, kafka.record.util;"
        "print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    modules = set(out.split())
    ours = {m for m in modules if m.split(".")[0] in {"events", "projections", "mcp_server", "connectors"}}
    allowed = {"connectors.kafka_producer", "events.collector", "mcp_server.logs"}  # and their (empty) packages
    assert ours == allowed | {name.partition(".")[0] for name in allowed}
    assert not {m for m in modules if m.split(".")[0] in {"eventsourcing", "mcp", "psycopg", "starlette", "uvicorn"}}


def producer_processes(data_dir: Path) -> list[int]:
    """The producer processes started by a backend on ``data_dir`` (they inherit its environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if b"connectors.kafka_producer" not in (proc / "cmdline").read_bytes():
                continue
            if f"CS_DATA_DIR={data_dir}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except (OSError, ValueError):  # not a process, gone meanwhile, or not ours
            continue
    return found


@pytest.mark.anyio
async def test_cs_serve_over_stdio_publishes_through_its_producer_process_and_leaves_none(
    tmp_path: Path, broker: KafkaBroker
) -> None:
    """``cs serve`` (stdio) with the publisher on: the MCP channel on stdout keeps working while
    the producer process runs, the event reaches the topic, and once the server exits its
    producer process is gone too."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    from tests.conftest import MASTER_KEY

    data_dir, topic = tmp_path / "data", f"cs.events.test-stdio-{os.getpid()}"
    env = {"CS_DATA_DIR": str(data_dir), "CS_MASTER_KEY": MASTER_KEY, "CS_KAFKA_BOOTSTRAP": broker.bootstrap,
           "CS_KAFKA_TOPIC": topic}  # fmt: skip
    params = StdioServerParameters(command=str(Path(sys.executable).with_name("cs")), args=["serve"], env=env)
    async with Client(params, read_timeout_seconds=60) as client:
        result = await client.call_tool("register_client", {"client_name": "Northwind", "arr": 1000, "tier": "growth"})
        assert not result.is_error, result.content
        wait_until(lambda: len(read_topic(broker.bootstrap, topic)) >= 1, 30, "the registration on the topic")
        (producer,) = producer_processes(data_dir)
        listed = await client.call_tool("list_clients", {})  # the stdio channel still answers
        assert not listed.is_error and listed.structured_content is not None
        assert [c["client_id"] for c in listed.structured_content["items"]] == ["northwind"]
    wait_until(lambda: exited(producer), 15, "the producer process gone after the server")
    assert producer_processes(data_dir) == []
    types = [json.loads(r.value)["type"] for r in read_topic(broker.bootstrap, topic)]
    assert types[0] == "customer.registered"
