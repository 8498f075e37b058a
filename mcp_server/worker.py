"""`cs worker`: the processing half of a split deployment (DESIGN §11-§12): every projection,
the relays (Kafka), and scheduled work — the daily health history and periodic vendor syncs.

`cs serve` runs the same scheduled jobs in-process, so one process is enough for a small
company; with several processes, each job runs in one of them at a time (a runner lock).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import structlog

from mcp_server.services import Services
from projections.health_history import update_history
from projections.store import RunnerLock

log = structlog.get_logger(__name__)

# While events keep coming, the views are folded in passes every 50 ms (each up to the head as it
# was when it started; idle, the log is polled every 0.5 s). Under 1,000 webhooks/s this kept the
# server's p99 under 40 ms in 4 paired runs of 4, where passes that chased the head (ending at the
# first empty read, then waiting a poll) gave 38-105 ms in 7: bursts of 500 events competed with it.
BUSY_PASS_INTERVAL = 0.05


@dataclass
class Job:
    name: str
    every: float  # seconds
    run: Callable[[], object]
    lock: RunnerLock
    due: float = 0.0
    last_error: str | None = field(default=None)


class Scheduler:
    """Runs jobs at intervals in one daemon thread; a job runs only where its lock is held."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.jobs: list[Job] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, every: float, run: Callable[[], object]) -> None:
        self.jobs.append(Job(name, every, run, self.svc.store.runner_lock(f"job:{name}")))

    def tick(self) -> None:
        now = time.monotonic()
        for job in self.jobs:
            if now < job.due or not job.lock.try_acquire():
                continue
            job.due = now + job.every
            try:
                job.run()
                job.last_error = None
            except Exception as exc:  # a failing job is logged and retried at its next turn
                job.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("job.failed", job=job.name, error=job.last_error)

    def start(self, poll: float = 5.0) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.tick()
                self._stop.wait(poll)

        self._thread = threading.Thread(target=loop, name="cs-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for job in self.jobs:
            job.lock.release()


def health_history_job(svc: Services) -> Callable[[], object]:
    """Record each finished UTC day's health (yesterday and any gap before it)."""

    def run() -> object:
        svc.engine.ensure_current()
        return update_history(svc.store, datetime.now(timezone.utc).date() - timedelta(days=1))

    return run


def sync_job(svc: Services, vendor: str) -> Callable[[], object]:
    def run() -> object:
        from mcp_server.cli_connectors import run_sync

        return anyio.run(run_sync, svc.ingestion(actor="worker"), vendor, svc.settings, 90)

    return run


def default_scheduler(svc: Services, *, sync_every: float | None) -> Scheduler:
    from mcp_server.cli_connectors import CREDENTIALS

    scheduler = Scheduler(svc)
    scheduler.add("health_history", 3600, health_history_job(svc))
    if sync_every:
        for vendor, names in CREDENTIALS.items():
            if all(svc.settings.vendor.get(n) for n in names):
                scheduler.add(f"sync_{vendor}", sync_every, sync_job(svc, vendor))
    return scheduler


def run_worker(svc: Services, *, sync_every: float | None, heartbeat: Path | None, max_seconds: float | None = None) -> None:
    """Until SIGTERM/SIGINT (or ``max_seconds``): views, relays and jobs in background threads;
    the heartbeat file's mtime says the worker is alive (compose health check)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    svc.engine.start(busy_interval=BUSY_PASS_INTERVAL)
    scheduler = default_scheduler(svc, sync_every=sync_every)
    scheduler.start()
    log.info("worker.start", projections=list(svc.engine.runners), relays=[r.name for r in svc.engine.relays],
             jobs=[j.name for j in scheduler.jobs])  # fmt: skip
    deadline = time.monotonic() + max_seconds if max_seconds else None
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if heartbeat is not None:
                heartbeat.parent.mkdir(parents=True, exist_ok=True)
                heartbeat.touch()
            stop.wait(5.0 if deadline is None else min(5.0, max(0.0, deadline - time.monotonic())))
    finally:
        scheduler.stop()
        log.info("worker.stop")
