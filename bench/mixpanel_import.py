"""Throughput of ``cs import mixpanel FILE``: raw Mixpanel export events per second.

A deterministic JSONL file of raw export events (about 1,000 customers x 30 days, several
users per account, a mix of event names, every ``$insert_id`` unique) is generated into a
temporary directory (timed apart, never counted). For each backend, in a fresh child
process (so peak RSS is that backend's own): the customers are registered through the
customers CSV import (``mixpanel_account_id`` set), then ``Ingestion.import_file("mixpanel",
...)`` is timed end to end (open the file, parse, match, roll up, commit), then the
projections fold what it recorded (``engine.ensure_current()``, timed apart), then the same
file is imported a second time (every event a duplicate).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import multiprocessing
import os
import random
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.runner import add_backend_args, backends_of, cpu_seconds, postmaster_pid, record, tree_cpu_seconds

SEED = 42
START_DAY = date(2026, 3, 2)  # a Monday; the window is START_DAY .. START_DAY + days - 1
SESSION_EVENT = "$session_start"
# Event names with relative weights: sessions, page views and a long tail of features.
EVENT_MIX: tuple[tuple[str, float], ...] = (
    (SESSION_EVENT, 14.0),
    ("$mp_web_page_view", 22.0),
    ("Dashboard Viewed", 12.0),
    ("Report Viewed", 10.0),
    ("Search Performed", 8.0),
    ("Record Updated", 7.0),
    ("Comment Added", 5.0),
    ("Filter Applied", 5.0),
    ("Report Created", 3.0),
    ("Export CSV", 3.0),
    ("Integration Synced", 3.0),
    ("Invite Sent", 1.5),
    ("Automation Created", 1.5),
    ("Settings Changed", 1.0),
    ("API Key Created", 0.5),
    ("Billing Page Viewed", 0.5),
)
BROWSERS = ("Chrome", "Safari", "Firefox", "Microsoft Edge")
OSES = ("Mac OS X", "Windows", "Linux", "iOS", "Android")
CITIES = (("Berlin", "Berlin", "DE"), ("London", "England", "GB"), ("Austin", "Texas", "US"),
          ("Paris", "Ile-de-France", "FR"), ("Toronto", "Ontario", "CA"), ("Sydney", "New South Wales", "AU"))  # fmt: skip
UNMATCHED_SHARE = 0.01  # of events, from accounts no customer carries (kept and counted as unmatched)
UNMATCHED_ACCOUNTS = 20
MB = 1024 * 1024


# ---------------------------------------------------------------------------- data
def account_id(index: int) -> str:
    return f"mp-acct-{index:05d}"


def customers_csv(customers: int) -> str:
    """The customers file a user would import first: every customer carries its mixpanel_account_id."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["external_key", "name", "domain", "industry", "tier", "arr", "seats", "contract_start",
                     "renewal_date", "owner", "contact_name", "contact_email", "mixpanel_account_id"])  # fmt: skip
    for i in range(customers):
        writer.writerow([
            f"bench-{i:05d}", f"Bench Customer {i:05d}", f"bench-{i:05d}.example.com", "software",
            ("starter", "growth", "enterprise")[i % 3], 2_000 + 500 * i, 5 + i % 200, "2025-06-01",
            (date(2026, 6, 1) + timedelta(days=i % 365)).isoformat(), "owner@vendor.example",
            f"Contact {i:05d}", f"contact@bench-{i:05d}.example.com", account_id(i),
        ])  # fmt: skip
    return out.getvalue()


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder: the parts sum to total)."""
    scale = total / sum(weights)
    raw = [w * scale for w in weights]
    parts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: parts[i] - raw[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def generate(path: Path, events: int, customers: int, days: int, seed: int = SEED) -> dict[str, Any]:
    """Write ``events`` raw export lines (JSONL, ordered by time like Mixpanel's export) to ``path``.

    Deterministic for a given (events, customers, days, seed): choices come from
    ``random.Random(seed)``, ``$insert_id`` is a blake2b digest of the seed and the event's
    ordinal (unique). Customers differ in size (users per account, activity), weekends are
    quieter, about 1% of events come from accounts that match no customer."""
    rng = random.Random(seed)
    accounts = [account_id(i) for i in range(customers)] + [f"mp-unknown-{i:03d}" for i in range(UNMATCHED_ACCOUNTS)]
    activity = [rng.lognormvariate(0.0, 0.8) for _ in range(customers)]
    matched_total = sum(activity)
    unknown_each = matched_total * UNMATCHED_SHARE / (1 - UNMATCHED_SHARE) / UNMATCHED_ACCOUNTS
    weights = activity + [unknown_each] * UNMATCHED_ACCOUNTS
    pools = [max(2, min(60, int(3 + w * 10 + rng.random() * 6))) for w in weights]  # distinct users per account
    names = [n for n, _ in EVENT_MIX]
    name_weights = [w for _, w in EVENT_MIX]
    per_day = _split(events, [0.35 if (START_DAY + timedelta(days=d)).weekday() >= 5 else 1.0 for d in range(days)])
    ordinal = 0
    users_seen: set[tuple[int, int]] = set()
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for d, count in enumerate(per_day):
            midnight = int(datetime.combine(START_DAY + timedelta(days=d), dtime(), timezone.utc).timestamp())
            chosen = rng.choices(range(len(accounts)), weights=weights, k=count)
            rows = []
            for a in chosen:
                user = int(rng.random() ** 1.5 * pools[a])  # a few heavy users, a long tail
                users_seen.add((a, user))
                moment = midnight + int(rng.triangular(6 * 3600, 22 * 3600, 14 * 3600))
                rows.append((moment, a, user, rng.choices(names, weights=name_weights)[0], rng.randrange(1 << 30)))
            rows.sort(key=lambda r: (r[0], r[4]))
            lines = []
            for moment, a, user, name, salt in rows:
                insert_id = hashlib.blake2b(f"{seed}:{ordinal}".encode(), digest_size=16).hexdigest()
                ordinal += 1
                city, region, country = CITIES[(a + user) % len(CITIES)]
                lines.append(json.dumps({"event": name, "properties": {
                    "time": moment, "distinct_id": f"{accounts[a]}-user-{user:03d}", "$insert_id": insert_id,
                    "account_id": accounts[a], "mp_processing_time_ms": moment * 1000 + salt % 5000,
                    "$browser": BROWSERS[(a + user) % len(BROWSERS)], "$os": OSES[(a * 7 + user) % len(OSES)],
                    "$city": city, "$region": region, "mp_country_code": country,
                    "$current_url": f"https://app.example.com/{name.lower().replace(' ', '-').strip('$')}",
                    "$screen_width": 1440, "$screen_height": 900, "mp_lib": "web", "$lib_version": "2.55.1",
                }}, separators=(",", ":")))  # fmt: skip
            out.write("\n".join(lines) + "\n")
    return {
        "accounts": len(accounts),
        "distinct_users": len(users_seen),
        "bytes": path.stat().st_size,
    }


# ----------------------------------------------------------------------- measuring
def _rss_mb() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _cpu_now(postmaster: int | None) -> dict[str, float]:
    """CPU seconds so far of this (the importing) process, of its children (the parser worker,
    and multiprocessing's resource tracker) and of the PostgreSQL server (every process of it;
    when it runs on this machine)."""
    own = cpu_seconds()
    figures = {"process": own, "children": tree_cpu_seconds(os.getpid()) - own}
    if postmaster is not None:
        figures["postgres"] = tree_cpu_seconds(postmaster)
    return figures


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


def measure_backend(path: str, events: int, customers: int, database_url: str | None, master_key: str) -> dict[str, Any]:
    """One backend, in its own process: register, import (timed), fold (timed), import again (timed)."""
    from connectors.customers import import_customers, read_rows
    from events.settings import Settings
    from mcp_server.services import open_services

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cs-bench-mixpanel-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=database_url, master_key=master_key)
        with open_services(settings) as svc:
            started = time.perf_counter()
            customer_report = import_customers(svc.app, read_rows(io.StringIO(customers_csv(customers))),
                                               actor="bench", source_name="customers.csv")  # fmt: skip
            svc.engine.ensure_current(timeout=120)
            figures["register_customers_s"] = time.perf_counter() - started
            _check(customer_report.created == customers and not customer_report.rejected,
                   f"customers import: {customer_report.as_dict()}")  # fmt: skip

            ingestion = svc.ingestion(actor="cli")  # what `cs import mixpanel FILE` builds
            head_before = svc.app.last_position()
            figures["rss_before_import_mb"] = _rss_mb()
            postmaster = postmaster_pid(database_url) if database_url else None
            cpu_before = _cpu_now(postmaster)
            started = time.perf_counter()
            with open(path, newline="", encoding="utf-8-sig") as stream:  # as `cs import` opens it
                report = ingestion.import_file("mixpanel", stream, Path(path).name)
            elapsed = time.perf_counter() - started
            cpu = {k: v - cpu_before[k] for k, v in _cpu_now(postmaster).items()}
            figures["peak_rss_import_mb"] = _peak_rss_mb()
            _check(report.received == events and report.recorded == events and report.duplicates == 0
                   and not report.rejected, f"first import: {report.as_dict()}")  # fmt: skip
            stored = svc.app.last_position() - head_before
            figures.update({
                "import_s": elapsed, "import_events_per_s": events / elapsed,
                "stored_events": stored, "unmatched_events": report.unmatched,
                **{f"import_{k}_cpu_us_per_event": v * 1e6 / events for k, v in cpu.items()},
            })  # fmt: skip

            started = time.perf_counter()
            svc.engine.ensure_current(timeout=600)
            fold = time.perf_counter() - started
            figures.update({"fold_s": fold, "fold_stored_events_per_s": stored / fold,
                            "fold_raw_events_per_s": events / fold})  # fmt: skip
            figures["peak_rss_fold_mb"] = _peak_rss_mb()

            again = svc.ingestion(actor="cli")
            head_before = svc.app.last_position()
            started = time.perf_counter()
            with open(path, newline="", encoding="utf-8-sig") as stream:
                second = again.import_file("mixpanel", stream, Path(path).name)
            elapsed = time.perf_counter() - started
            _check(second.received == events and second.recorded == 0 and second.duplicates == events,
                   f"second import: {second.as_dict()}")  # fmt: skip
            figures.update({
                "reimport_s": elapsed, "reimport_events_per_s": events / elapsed,
                "reimport_stored_events": svc.app.last_position() - head_before,
            })  # fmt: skip
            figures["peak_rss_mb"] = _peak_rss_mb()
    return figures


def _in_child(*args: Any) -> dict[str, Any]:
    """``measure_backend`` in a fresh spawned interpreter (its own peak RSS, no warm caches)."""
    # Not a multiprocessing.Pool: its processes are daemonic and may not start the import's parser worker.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_backend, *args).result()


@contextmanager
def postgres_database(database_url: str | None, keep: bool = False) -> Iterator[tuple[str, str]]:
    """A fresh database for one run, dropped after (unless ``keep``): on the server of ``database_url``
    (whose user needs CREATEDB), else on a throwaway server from tests/support/postgres.py."""
    from tests.support.postgres import create_database, drop_database, postgres_server

    with ExitStack() as stack:
        admin = database_url or stack.enter_context(postgres_server())
        url = create_database(admin, f"cs_bench_{secrets.token_hex(6)}")
        try:
            yield url, ("given server" if database_url else "throwaway embedded server")
        finally:
            if not keep:
                drop_database(admin, url)


# --------------------------------------------------------------------------- entry
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench mixpanel_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="raw events in the file (default 1,000,000)")
    parser.add_argument("--customers", type=int, default=1_000, help="customers, one Mixpanel account each (default 1,000)")
    parser.add_argument("--days", type=int, default=30, help="days the events span (default 30)")
    add_backend_args(parser, default="both")
    args = parser.parse_args(argv)
    if args.events < 1 or args.customers < 1 or args.days < 1:
        parser.error("--events, --customers and --days must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = backends_of(args)
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cs-bench-mixpanel-file-") as tmp:
        path = Path(tmp) / "mixpanel-export.jsonl"
        started = time.perf_counter()
        shape = generate(path, args.events, args.customers, args.days)
        generated = time.perf_counter() - started
        print(f"generated {args.events:,} events ({shape['bytes'] / MB:,.1f} MiB, {shape['distinct_users']:,} users) "
              f"in {generated:.1f} s (not counted)", file=sys.stderr)  # fmt: skip
        where: dict[str, str] = {}
        for backend in backends:
            with ExitStack() as stack:
                url = None
                if backend == "postgres":
                    url, where["postgres"] = stack.enter_context(postgres_database(args.database_url))
                figures[backend] = _in_child(str(path), args.events, args.customers, url, master_key)
            print(f"{backend}: {figures[backend]['import_events_per_s']:,.0f} raw events/s", file=sys.stderr)
    params: dict[str, Any] = {
        "events": args.events, "customers": args.customers, "days": args.days, "seed": SEED,
        "backends": list(backends), "accounts": shape["accounts"], "distinct_users": shape["distinct_users"],
        "file_mb": round(shape["bytes"] / MB, 1), "generate_s": round(generated, 2), **where,
        "target_import_events_per_s": 100_000,
    }  # fmt: skip
    record("mixpanel_import", figures, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
