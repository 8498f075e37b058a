"""The health model at book scale: scoring one customer over stdio, scoring the whole book, and
rebuilding every projection from the log.

A book of ``--customers`` accounts with ``--events`` raw Mixpanel events behind them (the
``mixpanel_import`` benchmark's deterministic generator, its window moved to end yesterday),
plus Zendesk tickets (and later snapshots of some of them), NPS answers and SendGrid events for
part of the book, is built once per backend through the real import paths (``cs import
customers`` and ``Ingestion.import_file``), the views are folded and the daily health history is
recorded up to yesterday (as a running deployment would have it, so `cs serve`'s daily job
finds nothing to do). On that data set, kept in a temporary directory for the run:

(a) ``calculate_health_score`` for one customer through ``cs serve`` over stdio, ``--calls``
    sequential calls on customers chosen with ``random.Random(42)``: with a lean JSON-RPC client
    (``bench.raw_stdio``: the server's latency, the figure the target is judged on) and with the
    official MCP client (which adds its own result validation on the same cores);
(b) the whole book: ``health_as_of`` for every customer in process, and the tool without
    ``client_id`` over stdio (which scores the book now and 30 days earlier, for the trend);
(c) ``ProjectionEngine.rebuild()`` (what ``cs rebuild`` runs: drop every view, refold the whole
    log), in stored events per second; then each projection rebuilt on its own.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import csv
import faulthandler
import io
import json
import os
import pstats
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from bench import mixpanel_import
from bench.core_tools import _checked, stdio_params
from bench.raw_stdio import RawStdioClient
from bench.runner import add_backend_args, backends_of, cpu_seconds, percentiles, record

SEED = 42
WARMUP_CALLS = 20
MB = 1024 * 1024
TARGET_ONE_P99_MS = 5.0
TARGET_BOOK_S = 1.0
TARGET_REBUILD_EVENTS_PER_S = 50_000


# ---------------------------------------------------------------------------------- data set
def first_day(days: int) -> date:
    """The window ends yesterday (UTC), so "now" is just after it and the history job is current."""
    return datetime.now(timezone.utc).date() - timedelta(days=days)


def customers_csv(customers: int, start: date) -> str:
    """Every customer with its Mixpanel account (the generator's), a Zendesk org and a contract."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["external_key", "name", "domain", "industry", "tier", "arr", "seats", "contract_start",
                     "renewal_date", "owner", "contact_name", "contact_email", "zendesk_org_id", "mixpanel_account_id"])  # fmt: skip
    for i in range(customers):
        writer.writerow([
            f"bench-{i:05d}", f"Bench Customer {i:05d}", f"bench-{i:05d}.example.com", "software",
            ("starter", "growth", "enterprise")[i % 3], 2_000 + 500 * i, 5 + i % 60, start.isoformat(),
            (start + timedelta(days=30 + (i * 7) % 400)).isoformat(), "owner@vendor.example",
            f"Contact {i:05d}", f"contact@bench-{i:05d}.example.com", str(500_000 + i), mixpanel_import.account_id(i),
        ])  # fmt: skip
    return out.getvalue()


def _moment(rng: random.Random, start: date, days: int) -> datetime:
    return datetime.combine(start, datetime.min.time(), timezone.utc) + timedelta(seconds=rng.randrange(days * 86_400))


def signal_files(customers: int, start: date, days: int, seed: int = SEED) -> dict[str, str]:
    """Tickets for 40% of the book (two export pages: opened, then later snapshots of some),
    NPS answers for 60%, e-mail events for 50%; deterministic for (customers, start, days, seed)."""
    rng = random.Random(seed)
    end = datetime.combine(start + timedelta(days=days), datetime.min.time(), timezone.utc)
    opened, later = [], []
    answers, emails = [], []
    for i in range(customers):
        email = f"contact@bench-{i:05d}.example.com"
        if rng.random() < 0.4:
            for _ in range(rng.randint(1, 8)):
                created = _moment(rng, start, days)
                ticket = {"id": 10_000 + len(opened), "status": rng.choice(("new", "open", "pending")),
                          "priority": rng.choice(("low", "normal", "normal", "high", "urgent")),
                          "type": "question", "subject": "Cannot export", "requester_id": 70_000 + i,
                          "organization_id": 500_000 + i, "created_at": created.isoformat(),
                          "updated_at": created.isoformat(), "generated_timestamp": int(created.timestamp()),
                          "satisfaction_rating": None, "via": {"channel": "email", "source": {"from": {"address": email}}}}  # fmt: skip
                opened.append(ticket)
                if rng.random() < 0.6:  # solved (and maybe rated) a few hours or days later
                    updated = min(created + timedelta(hours=rng.randint(2, 120)), end - timedelta(seconds=1))
                    score = rng.choice((None, "good", "good", "bad"))
                    later.append({**ticket, "status": "solved", "updated_at": updated.isoformat(),
                                  "generated_timestamp": int(updated.timestamp()),
                                  "satisfaction_rating": {"id": ticket["id"], "score": score, "comment": None} if score else None})  # fmt: skip
        if rng.random() < 0.6:
            for n in range(rng.randint(1, 3)):
                answers.append((f"nps-{i:05d}-{n}", f"bench-{i:05d}", email, rng.choice(range(11)), "",
                                _moment(rng, start, days).isoformat()))  # fmt: skip
        if rng.random() < 0.5:
            for m in range(rng.randint(1, 6)):
                sent = _moment(rng, start, days)
                kinds = ["processed", "delivered"] + (["open"] if rng.random() < 0.6 else []) + (["click"] if rng.random() < 0.2 else [])
                for k, kind in enumerate(kinds):
                    emails.append({"email": email, "timestamp": int(sent.timestamp()) + 60 * k, "event": kind,
                                   "sg_event_id": f"sg-{i:05d}-{m}-{kind}", "sg_message_id": f"m{i:05d}{m}.filter0001"})  # fmt: skip
    nps = io.StringIO()
    writer = csv.writer(nps, lineterminator="\n")
    writer.writerow(["response_id", "customer", "email", "score", "comment", "responded_at"])
    writer.writerows(answers)
    by_time = lambda t: (t["generated_timestamp"], t["id"])  # noqa: E731
    pages = [{"tickets": sorted(opened, key=by_time), "end_of_stream": False},
             {"tickets": sorted(later, key=by_time), "end_of_stream": True}]  # fmt: skip
    return {"zendesk": json.dumps(pages), "nps": nps.getvalue(), "sendgrid": json.dumps(emails)}


@contextmanager
def usage_window(start: date) -> Iterator[None]:
    """``mixpanel_import.generate`` writes its window from its module's START_DAY: point it at ours."""
    saved = mixpanel_import.START_DAY
    mixpanel_import.START_DAY = start
    try:
        yield
    finally:
        mixpanel_import.START_DAY = saved


def build(settings: Any, files: dict[str, Path], customers: int) -> dict[str, Any]:
    """Import everything through the real paths, fold, record the history up to yesterday."""
    from connectors.customers import import_customers, read_rows
    from mcp_server.services import open_services
    from projections.health_history import update_history

    figures: dict[str, Any] = {}
    with open_services(settings) as svc:
        started = time.perf_counter()
        with open(files["customers"], encoding="utf-8") as fh:
            report = import_customers(svc.app, read_rows(fh), actor="bench", source_name="customers.csv")
        if report.created != customers or report.rejected:
            raise RuntimeError(f"customers import: {report.as_dict()}")
        for source in ("mixpanel", "zendesk", "nps", "sendgrid"):
            ingestion = svc.ingestion(actor="cli")  # what `cs import SOURCE FILE` builds
            with open(files[source], newline="", encoding="utf-8-sig") as stream:
                result = ingestion.import_file(source, stream, files[source].name)
            if result.rejected:
                raise RuntimeError(f"{source} import rejected rows: {result.rejected[:3]}")
            figures[f"{source}_recorded"] = result.recorded
        figures["import_s"] = time.perf_counter() - started
        started = time.perf_counter()
        svc.engine.ensure_current(timeout=3600)
        figures["fold_s"] = time.perf_counter() - started
        figures["stored_events"] = svc.app.last_position()
        started = time.perf_counter()
        yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
        rows = update_history(svc.store, yesterday)
        figures["history_s"] = time.perf_counter() - started
        figures["history_rows"] = rows
    return figures


# ------------------------------------------------------------------------------ measurements
def score_book_in_process(settings: Any, repeats: int, customers: int, calls: int, profile: Path | None) -> dict[str, Any]:
    from uuid import UUID

    from mcp_server.services import open_services
    from projections.health import health_as_of, health_at

    with open_services(settings) as svc:
        svc.engine.ensure_current()
        as_of = datetime.now(timezone.utc)
        scores = health_as_of(svc.store, as_of)  # warm-up (and the check)
        if len(scores) != customers:
            raise RuntimeError(f"scored {len(scores)} customers, expected {customers}")
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            health_as_of(svc.store, as_of)
            samples.append(time.perf_counter() - started)
        # The tool's own read for one customer (its score and the one 30 days earlier, one
        # snapshot), without the server and the protocol around it.
        ids, rng, one = sorted(scores), random.Random(SEED), []
        for n in range(WARMUP_CALLS + calls):
            cid = UUID(ids[n] if n < WARMUP_CALLS else rng.choice(ids))
            started = time.perf_counter()
            with svc.store.snapshot() as tx:
                health_at(tx, [as_of, as_of - timedelta(days=30)], [cid])
            if n >= WARMUP_CALLS:
                one.append(time.perf_counter() - started)
        if profile is not None:
            profiler = cProfile.Profile()
            profiler.enable()
            health_as_of(svc.store, as_of)
            profiler.disable()
            _dump(profiler, profile)
    bands: dict[str, int] = {}
    for h in scores.values():
        bands[h.band] = bands.get(h.band, 0) + 1
    stats, one_stats = percentiles(samples), percentiles(one)
    return {"book_in_process_p50_ms": stats["p50_ms"], "book_in_process_max_ms": stats["max_ms"],
            "one_in_process_p50_ms": one_stats["p50_ms"], "one_in_process_p99_ms": one_stats["p99_ms"],
            "book_scored": len(scores), **{f"book_{band}": n for band, n in sorted(bands.items())},
            "book_mean_confidence": round(statistics.fmean(h.confidence for h in scores.values()), 3)}  # fmt: skip


Score = Callable[[str], Awaitable[dict[str, Any]]]  # client_id -> the tool's structured result


async def _timed_call(score: Score, key: str) -> float:
    """One ``calculate_health_score`` call's latency; it must answer for the customer asked."""
    started = time.perf_counter()
    result = await score(key)
    elapsed = time.perf_counter() - started
    if result["customer"]["client_id"] != key:
        raise RuntimeError(f"calculate_health_score answered for another customer than {key}")
    return elapsed


async def _warm_up(score: Score) -> None:
    for i in range(WARMUP_CALLS):
        await _timed_call(score, f"bench-{i:05d}")


async def _timed(score: Score, calls: int, customers: int) -> list[float]:
    """``calls`` sequential calls on customers chosen with ``random.Random(SEED)`` (the same
    customers for every client)."""
    rng = random.Random(SEED)
    return [await _timed_call(score, f"bench-{rng.randrange(customers):05d}") for _ in range(calls)]


async def score_over_stdio(settings: Any, master_key: str, calls: int, book_calls: int, customers: int) -> dict[str, Any]:
    params = stdio_params(settings.data_dir, settings.database_url, master_key)
    figures: dict[str, Any] = {}
    connect_start = time.perf_counter()
    async with Client(params) as client:
        figures["connect_ms"] = (time.perf_counter() - connect_start) * 1000

        async def score(key: str) -> dict[str, Any]:
            return _checked("calculate_health_score", await client.call_tool("calculate_health_score", {"client_id": key}))

        await _warm_up(score)
        started = time.perf_counter()
        samples = await _timed(score, calls, customers)
        wall = time.perf_counter() - started
        figures.update({f"one_{k}": v for k, v in percentiles(samples).items()})
        figures["one_calls_per_s"] = calls / wall

        book = []
        for n in range(book_calls + 1):
            started = time.perf_counter()
            result = await client.call_tool("calculate_health_score", {})
            elapsed = time.perf_counter() - started
            summary = _checked("calculate_health_score", result)["summary"]
            if sum(summary.values()) != customers:
                raise RuntimeError(f"book summary covers {sum(summary.values())} customers: {summary}")
            if n:  # the first call is a warm-up
                book.append(elapsed)
        stats = percentiles(book)
        figures["book_tool_p50_ms"], figures["book_tool_max_ms"] = stats["p50_ms"], stats["max_ms"]
    return figures


async def score_one_raw(settings: Any, master_key: str, calls: int, customers: int) -> dict[str, Any]:
    """The one-customer calls of :func:`score_over_stdio` (same customers, same warm-up) from a
    lean JSON-RPC client, with the server's and this client's CPU time per call."""
    async with RawStdioClient(stdio_params(settings.data_dir, settings.database_url, master_key)) as client:

        async def score(key: str) -> dict[str, Any]:
            return await client.call_tool("calculate_health_score", {"client_id": key})

        await _warm_up(score)
        server_cpu, client_cpu = cpu_seconds(client.pid), cpu_seconds()
        samples = await _timed(score, calls, customers)
        server_cpu, client_cpu = cpu_seconds(client.pid) - server_cpu, cpu_seconds() - client_cpu
    return {**{f"one_raw_{k}": v for k, v in percentiles(samples).items()},
            "one_raw_server_cpu_ms_per_call": server_cpu / calls * 1000,
            "one_raw_client_cpu_ms_per_call": client_cpu / calls * 1000}  # fmt: skip


def book_health(store: Any, as_of: datetime) -> dict[str, Any]:
    """The health of every customer as of ``as_of``, as plain JSON data (comparable across runs)."""
    from projections.health import health_as_of

    return json.loads(json.dumps({str(cid): h.as_dict() for cid, h in health_as_of(store, as_of).items()}, default=str))


def rebuild(settings: Any, profile: Path | None, raw_events: int, expected: dict[str, Any] | None = None,
            per_projection: bool = True) -> dict[str, Any]:
    """Time ``ProjectionEngine.rebuild()``; the book's health must be the same after it as before (or,
    with ``expected`` = ``{"as_of": ISO instant, "health": ...}`` from a kept data set, as when it was built)."""
    from mcp_server.services import open_services

    figures: dict[str, Any] = {}
    with open_services(settings) as svc:
        if expected is None:
            svc.engine.ensure_current()
            as_of = datetime.now(timezone.utc)
            before = book_health(svc.store, as_of)
        else:  # the views may have another layout than the code that built them: compare with the kept answer
            as_of, before = datetime.fromisoformat(expected["as_of"]), expected["health"]
        stored = svc.app.last_position()
        started = time.perf_counter()
        processed = svc.engine.rebuild()
        elapsed = time.perf_counter() - started
        if profile is not None:  # a second, profiled rebuild: the timed one runs without the profiler
            profiler = cProfile.Profile()
            profiler.enable()
            svc.engine.rebuild()
            profiler.disable()
            _dump(profiler, profile)
        after = book_health(svc.store, as_of)
        if expected is not None:  # a field added to the answer since the data set was kept has nothing to compare with
            after = {cid: {k: v for k, v in h.items() if k in before.get(cid, h)} for cid, h in after.items()}
        if after != before:
            raise RuntimeError("the health of the book differs after the rebuild")
        figures.update({"rebuild_s": elapsed, "rebuild_stored_events": stored,
                        "rebuild_events_per_s": stored / elapsed, "rebuild_raw_events_per_s": raw_events / elapsed,
                        "rebuild_projections": len(svc.engine.runners),
                        "rebuild_event_folds_per_s": processed / elapsed})  # fmt: skip
        for name in svc.engine.runners if per_projection else ():
            started = time.perf_counter()
            svc.engine.rebuild([name])
            figures[f"rebuild_{name}_s"] = time.perf_counter() - started
    return figures


def _dump(profiler: cProfile.Profile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
    print(f"profile written to {path}", file=sys.stderr)


# ------------------------------------------------------------------------------------- entry
def kept_params(args: argparse.Namespace, shape: dict[str, Any]) -> dict[str, Any]:
    """The parameters that describe the data set (recorded with a kept one and with its reuse)."""
    return {"customers": args.customers, "events": args.events, "days": args.days, "seed": SEED,
            "distinct_users": shape["distinct_users"], "file_mb": round(shape["bytes"] / MB, 1),
            "rebuild_target_judged_on": "rebuild_events_per_s (stored events)"}  # fmt: skip
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench health", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000, help="customers in the book (default 1,000)")
    parser.add_argument("--events", type=int, default=1_000_000, help="raw Mixpanel events (default 1,000,000)")
    parser.add_argument("--days", type=int, default=60, help="days of usage, ending yesterday (default 60)")
    parser.add_argument("--calls", type=int, default=500, help="timed one-customer calls over stdio (default 500)")
    parser.add_argument("--book-calls", type=int, default=10, help="timed whole-book scorings, each way (default 10)")
    add_backend_args(parser, default="sqlite")
    parser.add_argument("--profile-dir", type=Path, help="write cProfile summaries of the book scoring and the rebuild here")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the built data set in DIR (with --backend postgres: the database on --database-url "
                        "too, not dropped) for later runs with --reuse")  # fmt: skip
    parser.add_argument("--reuse", type=Path, metavar="DIR",
                        help="skip generating, importing and scoring: rebuild the data set kept in DIR by --keep "
                        "(its parameters are the kept ones) and compare the book's health with the kept answer")  # fmt: skip
    parser.add_argument("--no-per-projection", action="store_true",
                        help="skip rebuilding each projection alone after the full rebuild (with or without --reuse)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds before a stuck run dumps every thread's stack and exits (default 3600)")  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.customers, args.events, args.days, args.calls, args.book_calls) < 1:
        parser.error("--customers, --events, --days, --calls and --book-calls must be at least 1")
    if args.keep and args.reuse:
        parser.error("--keep and --reuse exclude each other")
    if args.keep and args.backend != "sqlite" and not (args.database_url or os.environ.get("CS_DATABASE_URL")):
        parser.error("--keep with PostgreSQL needs --database-url (a throwaway server cannot be kept)")
    return args


MANIFEST = "health-bench.json"


def keep_manifest(folder: Path, backend: str, settings: Any, master_key: str, params: dict[str, Any]) -> None:
    """What --reuse needs to find and check a kept data set: where it is, its key, the book's health."""
    from mcp_server.services import open_services

    with open_services(settings) as svc:
        svc.engine.ensure_current()
        as_of = datetime.now(timezone.utc)
        health = book_health(svc.store, as_of)
    path = folder / MANIFEST
    kept = json.loads(path.read_text()) if path.exists() else {"params": params, "backends": {}}
    kept["backends"][backend] = {"data_dir": str(settings.data_dir), "database_url": settings.database_url,
                                 "master_key": master_key, "as_of": as_of.isoformat(), "health": health}  # fmt: skip
    path.write_text(json.dumps(kept), encoding="utf-8")
    print(f"{backend}: data set kept in {folder} (reuse with --reuse {folder})", file=sys.stderr)


def main_reuse(args: argparse.Namespace) -> int:
    """Rebuild a kept data set (per backend asked for and kept) and record the rebuild figures only."""
    from events.settings import Settings

    kept = json.loads((args.reuse / MANIFEST).read_text())
    figures: dict[str, Any] = {}
    for backend in backends_of(args):
        if backend not in kept["backends"]:
            raise SystemExit(f"{args.reuse} holds no {backend} data set (kept: {', '.join(kept['backends'])})")
        k = kept["backends"][backend]
        settings = Settings(data_dir=Path(k["data_dir"]), database_url=k["database_url"], master_key=k["master_key"])
        profile = args.profile_dir / f"health-{backend}-rebuild.txt" if args.profile_dir else None
        out = rebuild(settings, profile, kept["params"]["events"], k, per_projection=not args.no_per_projection)
        out["rebuild_target_met"] = out["rebuild_events_per_s"] >= TARGET_REBUILD_EVENTS_PER_S
        figures[backend] = out
        _say_rebuild(backend, out)
    faulthandler.cancel_dump_traceback_later()
    record("health", figures, {**kept["params"], "reused": str(args.reuse), "only": "rebuild"})
    return 0


def _say_rebuild(backend: str, out: dict[str, Any]) -> None:
    print(f"{backend}: rebuild {out['rebuild_s']:.2f} s = {out['rebuild_events_per_s']:,.0f} stored events/s "
          f"(target {TARGET_REBUILD_EVENTS_PER_S:,}/s, judged on stored events: "
          f"{'met' if out['rebuild_events_per_s'] >= TARGET_REBUILD_EVENTS_PER_S else 'missed'}) "
          f"= {out['rebuild_raw_events_per_s']:,.0f} raw Mixpanel events/s", file=sys.stderr)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from events.settings import PostgresDsn, Settings

    args = parse_args(argv)
    faulthandler.dump_traceback_later(args.timeout, exit=True)  # a hung database call says where
    if args.reuse:
        return main_reuse(args)
    backends = backends_of(args)
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    start = first_day(args.days)
    figures: dict[str, Any] = {}
    where: dict[str, str] = {}
    with ExitStack() as kept:
        folder = args.keep or Path(kept.enter_context(tempfile.TemporaryDirectory(prefix="cs-bench-health-")))
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        files = {"mixpanel": folder / "mixpanel-export.jsonl", "customers": folder / "customers.csv"}
        with usage_window(start):
            shape = mixpanel_import.generate(files["mixpanel"], args.events, args.customers, args.days)
        files["customers"].write_text(customers_csv(args.customers, start), encoding="utf-8")
        for source, text in signal_files(args.customers, start, args.days).items():
            files[source] = folder / f"{source}-export.{'csv' if source == 'nps' else 'json'}"
            files[source].write_text(text, encoding="utf-8")
        generated = time.perf_counter() - started
        print(f"generated {args.events:,} usage events ({shape['bytes'] / MB:,.0f} MiB) and signal files in "
              f"{generated:.1f} s (not counted)", file=sys.stderr)  # fmt: skip
        for backend in backends:
            with ExitStack() as stack:
                url = None
                if backend == "postgres":
                    url, where["postgres"] = stack.enter_context(
                        mixpanel_import.postgres_database(args.database_url, keep=bool(args.keep)))
                settings = Settings(data_dir=folder / backend, database_url=url, master_key=master_key)
                profile = (lambda name: args.profile_dir / f"health-{backend}-{name}.txt") if args.profile_dir else (lambda name: None)  # noqa: E731
                out: dict[str, Any] = {}
                out.update(build(settings, files, args.customers))
                print(f"{backend}: built ({out['stored_events']:,} stored events)", file=sys.stderr)
                out.update(score_book_in_process(settings, args.book_calls, args.customers, args.calls, profile("book")))
                out.update(anyio.run(score_one_raw, settings, master_key, args.calls, args.customers))
                out.update(anyio.run(score_over_stdio, settings, master_key, args.calls, args.book_calls, args.customers))
                if args.keep:
                    keep_manifest(folder, backend, settings, master_key, kept_params(args, shape))
                out.update(rebuild(settings, profile("rebuild"), args.events, per_projection=not args.no_per_projection))
                out["one_target_met"] = out["one_raw_p99_ms"] < TARGET_ONE_P99_MS
                out["one_sdk_client_target_met"] = out["one_p99_ms"] < TARGET_ONE_P99_MS
                out["book_target_met"] = max(out["book_in_process_p50_ms"], out["book_tool_p50_ms"]) < TARGET_BOOK_S * 1000
                out["rebuild_target_met"] = out["rebuild_events_per_s"] >= TARGET_REBUILD_EVENTS_PER_S
                figures[backend] = out
                print(f"{backend}: one p99 {out['one_raw_p99_ms']:.1f} ms (official client {out['one_p99_ms']:.1f} ms), book {out['book_in_process_p50_ms']:.0f} ms "
                      f"(tool {out['book_tool_p50_ms']:.0f} ms)", file=sys.stderr)  # fmt: skip
                _say_rebuild(backend, out)
    params: dict[str, Any] = {
        **kept_params(args, shape), "calls": args.calls,
        "book_calls": args.book_calls, "warmup_calls": WARMUP_CALLS, "backends": list(backends),
        "generate_s": round(generated, 1), **where,
        "targets": {"one_p99_ms": TARGET_ONE_P99_MS, "book_s": TARGET_BOOK_S,
                    "rebuild_events_per_s": TARGET_REBUILD_EVENTS_PER_S},
    }  # fmt: skip
    if args.database_url:
        dsn = PostgresDsn.parse(args.database_url)
        params["database"] = f"{dsn.host}:{dsn.port}/{dsn.dbname}"
    faulthandler.cancel_dump_traceback_later()
    record("health", figures, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
