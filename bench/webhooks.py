"""Throughput and latency of signed Zendesk ticket webhooks against ``cs serve --http``.

``cs serve --http`` runs as a subprocess on a free loopback port (configured only through
``CS_*`` variables, with ``CS_ZENDESK_WEBHOOK_SECRET`` set), over a data directory where the
customers were imported first (each with a ``zendesk_org_id``). Signed
``zen:event-type:ticket.*`` deliveries are POSTed to ``/webhooks/zendesk`` (mostly new tickets,
some status changes of tickets delivered earlier, some exact re-deliveries) by the raw HTTP/1.1
load generator of :mod:`bench.http_load`, in two phases: an open loop at ``--rate`` deliveries
per second (latency from each request's due time, the target question), then a closed loop
with ``--concurrency`` in flight (the maximum throughput). The server is stopped at the end,
whatever happened.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from bench import http_load
from bench.runner import REPO_ROOT, add_backend_args, backends_of, cpu_seconds, percentiles, postmaster_pid, record, tree_cpu_seconds

SEED = 42
WARMUP = 50
STARTUP_TIMEOUT = 60.0  # seconds for `cs serve --http` to answer /healthz
STOP_TIMEOUT = 15.0  # seconds for it to exit after SIGINT (then SIGKILL)
CATCH_UP_TIMEOUT = 120.0  # seconds for the projections to fold the deliveries after the run
PATH = "/webhooks/zendesk"
TARGET_PER_S = 1_000
TARGET_P99_MS = 50.0
WEBHOOK_SECRET_BYTES = 32
UPDATE_SHARE = 0.10  # deliveries that change the status of a ticket delivered earlier
DUPLICATE_SHARE = 0.10  # deliveries that repeat an earlier delivery byte for byte
ORG_BASE = 360_000_000


@dataclass(frozen=True)
class Delivery:
    body: bytes
    webhook_id: str
    kind: str  # "new", "update", "duplicate"


def customers_csv(customers: int, today: date) -> str:
    """The customers file imported first: each customer has a Zendesk organization; contracts
    started 60 days ago (the server's daily health history then has little to backfill)."""
    lines = ["external_key,name,domain,industry,tier,arr,seats,contract_start,renewal_date,owner,contact_name,"
             "contact_email,zendesk_org_id"]  # fmt: skip
    for i in range(customers):
        renewal = today + timedelta(days=30 + i % 365)
        lines.append(f"wh-{i:05d},Webhook Customer {i:05d},wh-{i:05d}.example.com,software,growth,{5_000 + 100 * i},"
                     f"{5 + i % 100},{today - timedelta(days=60)},{renewal},owner@vendor.example,Contact {i:05d},"
                     f"contact@wh-{i:05d}.example.com,{ORG_BASE + i}")  # fmt: skip
    return "\n".join(lines) + "\n"


def deliveries(count: int, customers: int, *, first_ticket: int, concurrency: int, start: datetime,
               seed: int = SEED) -> list[Delivery]:
    """``count`` deliveries in send order (deterministic for a seed). An update or a duplicate
    only refers to a delivery at least ``2 * concurrency`` places earlier, so it is not in
    flight at the same time as the delivery it follows."""
    from tests.support.vendors.zendesk import zendesk_ticket, zendesk_ticket_event

    rng = random.Random(seed)
    gap = 2 * concurrency
    out: list[Delivery] = []
    latest: dict[int, tuple[int, int]] = {}  # ticket id -> (org, index of its latest delivery), oldest first
    statuses: dict[int, str] = {}
    for i in range(count):
        roll = rng.random()
        settled = [t for t, (_, at) in islice(latest.items(), 4 * gap) if at <= i - gap]  # oldest tickets first
        if roll < DUPLICATE_SHARE and settled:
            earlier = out[latest[rng.choice(settled)][1]]
            out.append(Delivery(earlier.body, earlier.webhook_id, "duplicate"))
            continue
        if roll < DUPLICATE_SHARE + UPDATE_SHARE and settled:
            ticket_id = rng.choice(settled)
            org = latest.pop(ticket_id)[0]  # re-inserted below: now the newest
            version = i  # any increasing number
            status = rng.choice([s for s in ("open", "pending", "solved", "closed") if s != statuses[ticket_id]])
            event_type, kind = "ticket.status_changed", "update"
        else:
            ticket_id, org = first_ticket + i, ORG_BASE + rng.randrange(customers)
            version, status, event_type, kind = i, "new", "ticket.created", "new"
        ticket = zendesk_ticket(ticket_id, org, status=status, priority=rng.choice(("low", "normal", "high", "urgent")),
                                subject=f"Bench ticket {ticket_id}", updated_at=start + timedelta(seconds=version),
                                created_at=start + timedelta(seconds=ticket_id - first_ticket))  # fmt: skip
        body = json.dumps(zendesk_ticket_event(ticket, event_type=event_type), separators=(",", ":")).encode()
        out.append(Delivery(body, f"01HBENCH{i:018d}", kind))
        latest[ticket_id] = (org, len(out) - 1)
        statuses[ticket_id] = status
    return out


# ---------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _stopped_on_exit(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGINT ``proc`` on exit, then SIGKILL after ``STOP_TIMEOUT``, whatever happened."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)


def _spawn(command: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mcp_server.cli", *command], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _exited(proc: subprocess.Popen[bytes], what: str, log_path: Path) -> RuntimeError:
    return RuntimeError(f"{what} exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")


@contextmanager
def worker_process(env: dict[str, str], data_dir: Path, log_path: Path) -> Iterator[int]:
    """``cs worker`` (the second process of compose.yaml's deployment); yields its pid once its
    heartbeat file exists, i.e. once it holds every projection runner lock it could take, so a
    server started afterwards only serves and records. Stopped on exit like the server."""
    heartbeat = data_dir / "worker.heartbeat"
    with log_path.open("wb") as log:
        proc = _spawn(["worker", "--sync-every", "0"], env, log)
        with _stopped_on_exit(proc):
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not heartbeat.exists():
                if proc.poll() is not None:
                    raise _exited(proc, "cs worker", log_path)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cs worker without a heartbeat after {STARTUP_TIMEOUT:.0f} s")
                time.sleep(0.1)
            yield proc.pid


@contextmanager
def http_server(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """``cs serve --http`` on a free loopback port; yields its base URL and pid once /healthz answers 200.
    Always stopped on exit: SIGINT, then SIGKILL after ``STOP_TIMEOUT``."""
    port = _free_port()
    with log_path.open("wb") as log:
        proc = _spawn(["serve", "--http", "--host", "127.0.0.1", "--port", str(port)], env, log)
        with _stopped_on_exit(proc):
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise _exited(proc, "cs serve", log_path)
                try:
                    if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cs serve not answering /healthz after {STARTUP_TIMEOUT:.0f} s")
                time.sleep(0.1)
            yield base, proc.pid


# ------------------------------------------------------------------------ the load
def signed_requests(secret: str, items: Sequence[Delivery]) -> http_load.Build:
    """Request ``i``: POST ``items[i]`` to /webhooks/zendesk, signed when it is sent with the
    current time (the receiver refuses a timestamp more than 5 minutes off)."""
    from tests.support.vendors.zendesk import zendesk_webhook_headers

    stamp = ("", -1)  # (Zendesk timestamp, the second it is for): formatted once a second

    def build(i: int) -> tuple[str, dict[str, str], bytes]:
        nonlocal stamp
        second = int(time.time())
        if stamp[1] != second:
            stamp = (datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), second)
        item = items[i]
        return PATH, zendesk_webhook_headers(secret, item.body, timestamp_iso=stamp[0], webhook_id=item.webhook_id), item.body

    return build


def outcomes_of(result: http_load.LoadResult) -> Counter[str]:
    """The server's answers: its ``status`` for a 200, else ``http <code>``."""
    outcomes: Counter[str] = Counter()
    for response in result.responses:
        if response is None:
            outcomes["no answer"] += 1
        elif response.status != 200:
            outcomes[f"http {response.status}"] += 1
        else:
            outcomes[str(orjson.loads(response.body).get("status"))] += 1
    return outcomes


STATEMENT_OPTIONS = ("-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all "
                     "-c pg_stat_statements.track_utility=on -c pg_stat_statements.max=5000")  # fmt: skip


def statement_calls(database_url: str) -> Counter[str]:
    """Statements executed so far in the database of ``database_url`` (pg_stat_statements, its
    normalised text -> calls), with ``--postgres-statements``."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT query, calls FROM pg_stat_statements"
                            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()  # fmt: skip
    calls: Counter[str] = Counter()
    for query, count in rows:
        calls[" ".join(query.split())[:160]] += count
    return calls


def print_statements(phase: str, calls: Counter[str], deliveries: int) -> None:
    print(f"\n{phase}: PostgreSQL statements per delivery (pg_stat_statements), {sum(calls.values()) / deliveries:.2f} in all",
          file=sys.stderr)  # fmt: skip
    for query, count in calls.most_common():
        if count > 0:
            print(f"  {count / deliveries:8.3f}  {query}", file=sys.stderr)


def wait_caught_up(base: str) -> float:
    """Seconds until /healthz reports no projection lag (bounded by ``CATCH_UP_TIMEOUT``)."""
    started = time.perf_counter()
    while time.perf_counter() - started < CATCH_UP_TIMEOUT:
        status = httpx.get(f"{base}/healthz", timeout=10.0).json()
        if all(p["lag"] == 0 for p in status["projections"]):
            return time.perf_counter() - started
        time.sleep(0.05)
    raise TimeoutError(f"projections still lagging {CATCH_UP_TIMEOUT:.0f} s after the last delivery")


def measure(database_url: str | None, args: argparse.Namespace, *, split: bool = False) -> dict[str, Any]:
    """One backend, one deployment shape: ``cs serve --http`` alone (it folds the views too),
    or with ``split`` beside a ``cs worker`` started first (compose.yaml's shape: the worker
    holds the projection runner locks and folds, the server only serves and records)."""
    from connectors.customers import import_customers, read_rows
    from events.settings import Settings
    from mcp_server.services import open_services

    from projections.health_history import update_history

    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    secret = secrets.token_urlsafe(WEBHOOK_SECRET_BYTES)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="cs-bench-webhooks-") as tmp:
        data_dir = Path(tmp)
        settings = Settings(data_dir=data_dir, database_url=database_url, master_key=master_key)
        with open_services(settings) as svc:  # the customers first, as `cs import customers` would
            report = import_customers(svc.app, read_rows(io.StringIO(customers_csv(args.customers, now.date()))),
                                      actor="bench", source_name="customers.csv")  # fmt: skip
            if report.created != args.customers or report.rejected:
                raise RuntimeError(f"customers import: {report.as_dict()}")
            svc.engine.ensure_current(timeout=120)
            # What the server's hourly job would otherwise backfill at start-up, during the run.
            update_history(svc.store, now.date() - timedelta(days=1))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CS_")}
        env.update({"CS_DATA_DIR": str(data_dir), "CS_MASTER_KEY": master_key, "CS_ZENDESK_WEBHOOK_SECRET": secret,
                    "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
        if database_url:
            env["CS_DATABASE_URL"] = database_url
        start = now - timedelta(days=1)  # tickets of the last day; one second apart
        gap = max(args.connections, args.concurrency)
        warm = deliveries(WARMUP, args.customers, first_ticket=1, concurrency=gap, start=start, seed=SEED + 1)
        phases = {  # fresh tickets for each phase
            "open": deliveries(args.deliveries, args.customers, first_ticket=1_000_000, concurrency=args.connections,
                               start=start + timedelta(seconds=WARMUP)),
            "closed": deliveries(args.deliveries, args.customers, first_ticket=2_000_000, concurrency=args.concurrency,
                                 start=start + timedelta(seconds=WARMUP + args.deliveries)),
        }  # fmt: skip
        figures: dict[str, Any] = {}
        postmaster = postmaster_pid(database_url) if database_url else None
        if database_url and args.postgres_statements:
            import psycopg

            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        with ExitStack() as processes:
            worker = processes.enter_context(worker_process(env, data_dir, data_dir / "worker.log")) if split else None
            base, pid = processes.enter_context(http_server(env, data_dir / "serve.log"))
            host, port = base.removeprefix("http://").rsplit(":", 1)
            warmed = http_load.run(http_load.closed_loop(host, int(port), signed_requests(secret, warm), WARMUP,
                                                         min(args.concurrency, WARMUP)))  # fmt: skip
            check_outcomes(outcomes_of(warmed))
            wait_caught_up(base)
            for phase, items in phases.items():
                build = signed_requests(secret, items)
                server_cpu, client_cpu = cpu_seconds(pid), cpu_seconds()
                worker_cpu = cpu_seconds(worker) if worker else 0.0
                postgres_cpu = tree_cpu_seconds(postmaster) if postmaster else 0.0
                statements = statement_calls(database_url) if database_url and args.postgres_statements else None
                if phase == "open":
                    load = http_load.open_loop(host, int(port), build, len(items), args.rate, args.connections)
                else:
                    load = http_load.closed_loop(host, int(port), build, len(items), args.concurrency)
                result = http_load.run(load)
                server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, cpu_seconds() - client_cpu
                catch_up = wait_caught_up(base)
                worker_cpu = cpu_seconds(worker) - worker_cpu if worker else 0.0  # its folding included
                postgres_cpu = tree_cpu_seconds(postmaster) - postgres_cpu if postmaster else 0.0  # likewise
                if statements is not None:
                    statements = statement_calls(database_url) - statements  # type: ignore[arg-type]
                    print_statements(f"{'server + worker' if split else 'single'}, {phase} loop", statements, len(items))
                outcomes = outcomes_of(result)
                check_outcomes(outcomes)
                kinds = Counter(d.kind for d in items)
                figures[phase] = {
                    **({"offered_per_s": float(args.rate)} if phase == "open" else {}),
                    "deliveries_per_s": len(items) / result.wall,
                    **{f"latency_{k}": v for k, v in percentiles(result.latencies).items()},
                    **({"late_sends": result.late_starts} if phase == "open" else {}),
                    "recorded": outcomes["recorded"],
                    "duplicates": outcomes["duplicate"],
                    "duplicates_sent": kinds["duplicate"],
                    "status_changes_sent": kinds["update"],
                    "projection_catch_up_s": catch_up,
                    "server_cpu_ms_per_delivery": server_cpu * 1000 / len(items),
                    "client_cpu_ms_per_delivery": client_cpu * 1000 / len(items),
                    **({"worker_cpu_ms_per_delivery": worker_cpu * 1000 / len(items)} if worker else {}),
                    **({"postgres_cpu_ms_per_delivery": postgres_cpu * 1000 / len(items)} if postmaster else {}),
                    **({"postgres_statements_per_delivery": sum(statements.values()) / len(items)}
                       if statements is not None else {}),  # fmt: skip
                }
    opened, closed = figures["open"], figures["closed"]
    return {
        **{f"open_{k}": v for k, v in opened.items()},
        **{f"closed_{k}": v for k, v in closed.items()},
        "target_met": bool(opened["latency_p99_ms"] < TARGET_P99_MS and args.rate >= TARGET_PER_S
                           and closed["deliveries_per_s"] >= TARGET_PER_S),
    }  # fmt: skip


def check_outcomes(outcomes: Counter[str]) -> None:
    if set(outcomes) - {"recorded", "duplicate"}:
        raise RuntimeError(f"deliveries answered otherwise than recorded/duplicate: {dict(outcomes)}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench webhooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5_000, help="timed deliveries in each phase (default 5,000)")
    parser.add_argument("--rate", type=float, default=float(TARGET_PER_S),
                        help=f"open loop: deliveries sent per second (default {TARGET_PER_S:,})")
    parser.add_argument("--connections", type=int, default=64,
                        help="open loop: connections, so at most this many requests in flight (default 64)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed loop: requests in flight (default 32)")
    parser.add_argument("--customers", type=int, default=200, help="customers, one Zendesk organization each (default 200)")
    parser.add_argument("--shape", choices=("single", "split", "both"), default="both",
                        help="single: `cs serve --http` alone; split: with `cs worker` folding the views (compose.yaml); "
                             "both (default)")  # fmt: skip
    parser.add_argument("--postgres-statements", action="store_true",
                        help="PostgreSQL: count the statements of each phase (pg_stat_statements on the throwaway server; "
                             "a --database-url server must have it loaded), printed per delivery; costs the server some CPU")  # fmt: skip
    add_backend_args(parser, default="both")
    args = parser.parse_args(argv)
    if min(args.deliveries, args.concurrency, args.connections, args.customers) < 1 or args.rate <= 0:
        parser.error("--deliveries, --concurrency, --connections and --customers must be at least 1, --rate above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from bench.mixpanel_import import postgres_database
    from tests.support.postgres import postgres_server

    args = parse_args(argv)
    backends = backends_of(args)
    figures: dict[str, Any] = {}
    where: dict[str, str] = {}
    shapes = {"single": False, "split": True} if args.shape == "both" else {args.shape: args.shape == "split"}
    for backend in backends:
        with ExitStack() as server:
            admin = args.database_url
            if backend == "postgres":
                where["postgres"] = "given server" if admin else "throwaway embedded server"
                admin = admin or server.enter_context(postgres_server(STATEMENT_OPTIONS if args.postgres_statements else ""))
            for split in shapes.values():  # a fresh database for each shape
                with ExitStack() as stack:
                    url = stack.enter_context(postgres_database(admin))[0] if backend == "postgres" else None
                    # the split figures under their own name, beside the single-process ones
                    figures[f"{backend}_server_worker" if split else backend] = measure(url, args, split=split)
    params: dict[str, Any] = {
        "deliveries": args.deliveries, "rate": args.rate, "connections": args.connections,
        "concurrency": args.concurrency, "customers": args.customers, "postgres_statements": args.postgres_statements,
        "warmup": WARMUP, "seed": SEED, "update_share": UPDATE_SHARE, "duplicate_share": DUPLICATE_SHARE,
        "backends": list(backends), "shape": args.shape, "transport": "cs serve --http (subprocess, uvicorn), bench.http_load (raw HTTP/1.1 keep-alive)",
        **where, "target_deliveries_per_s": TARGET_PER_S, "target_p99_ms": TARGET_P99_MS,
    }  # fmt: skip
    record("webhooks", figures, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
