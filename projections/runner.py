"""The pull-based catch-up runner (DESIGN §4) and the engine that runs every projection.

For each projection: read notifications after its checkpoint from the application
recorder (``select_notifications``, see log_reader.py), fold them, and write the view rows and the new
checkpoint in one transaction (exactly-once). Only the holder of the projection's runner
lock processes it (PostgreSQL advisory lock / file lock); other processes only wait for
its checkpoint. A failing event stops that projection: the events before it are
committed, its checkpoint stays just before it, and it is never skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import structlog
from eventsourcing.utils import resolve_topic

from events.collector import collector_paused
from projections.base import Projection
from projections.decode import fold_mapper
from projections.log_reader import read_after
from projections.relay import EventRelay
from projections.store import LogConsumer, ViewStore

log = structlog.get_logger(__name__)

BATCH_SIZE = 5000  # events read, folded and committed together while keeping up with the log
# ... while rebuilding: a pass over the whole log has per-batch costs (each view reads back the
# rows and numbering its batch touches, one transaction each); four times fewer batches rebuilt the
# benchmark book ~17 % faster, for about twice the peak memory (~260 vs ~130 MB; bench/README).
REBUILD_BATCH_SIZE = 20000
MIN_PASS_INTERVAL = 0.02  # seconds between background passes at the most (see ProjectionEngine.start)
_Read = tuple[Sequence[Any], list[tuple[Any, int]], Exception | None]  # a batch, its decoded events, a decoding error
Kinds = tuple[type, ...] | None  # the event classes wanted (None: every event)


@lru_cache(maxsize=4096)
def wanted(topic: str, kinds: Kinds) -> bool:
    """Whether a stored event of ``topic`` is one of ``kinds`` (None: every event). A topic that does
    not resolve is wanted: decoding it raises, and the projection stops there as it always did."""
    if kinds is None:
        return True
    try:
        cls = resolve_topic(topic)
    except Exception:  # noqa: BLE001 - any failure to resolve: let the decoding report it
        return True
    return not isinstance(cls, type) or issubclass(cls, kinds)


def wanted_kinds(projections: Sequence[Projection]) -> Kinds:
    """The event classes the decoded (not raw) ``projections`` act on, together (None: every event)."""
    kinds: list[type] = []
    for projection in projections:
        if projection.raw:
            continue
        if projection.handles is None:
            return None
        kinds.extend(k for k in projection.handles if k not in kinds)
    return tuple(kinds)


def decode_wanted(mapper: Any, batch: Sequence[Any], kinds: Kinds) -> list[tuple[Any, int]]:
    """``(event, position)`` of the notifications in ``batch`` that are of ``kinds``, decoded, in order
    (``()``: none, no projection decodes)."""
    if kinds is None:
        return [(mapper.to_domain_event(n), n.id) for n in batch]
    if not kinds:
        return []
    return [(mapper.to_domain_event(n), n.id) for n in batch if wanted(n.topic, kinds)]


@lru_cache(maxsize=4096)
def _is_one_of(cls: type, kinds: tuple[type, ...]) -> bool:
    return issubclass(cls, kinds)


class Selection:
    """The decoded ``(event, position)`` pairs of a batch (events of ``kinds``), and those of them a
    projection acts on (its ``handles``), in log order: a projection is given the same events in a
    shared pass as on its own, whatever the others read. The batch is indexed by class once, so a
    projection that acts on a few events of a batch costs a few steps, not one per event."""

    def __init__(self, items: list[tuple[Any, int]], kinds: Kinds) -> None:
        self.items = items
        self.kinds = kinds
        self._by_class: dict[type, list[int]] = {}
        for index, (event, _) in enumerate(items):
            self._by_class.setdefault(type(event), []).append(index)

    def of(self, handles: Kinds) -> list[tuple[Any, int]]:
        if handles is None or handles == self.kinds:
            return self.items
        runs = [run for cls, run in self._by_class.items() if _is_one_of(cls, handles)]
        if len(runs) == 1:
            return [self.items[i] for i in runs[0]]
        items = self.items
        return [items[i] for i in sorted(i for run in runs for i in run)]


@dataclass
class ProjectionFailure:
    position: int
    topic: str
    error: str


class ProjectionStoppedError(RuntimeError):
    """A projection stopped on an event it could not process."""

    def __init__(self, name: str, failure: ProjectionFailure) -> None:
        self.name = name
        self.failure = failure
        super().__init__(
            f"projection {name} stopped at event {failure.position} ({failure.topic}): {failure.error}"
        )


class ViewsBehindError(RuntimeError):
    """The views did not reach the wanted position in time."""


class CatchUpRunner(LogConsumer):
    """Runs one projection from its checkpoint to the head of the log."""

    def __init__(self, projection: Projection, store: ViewStore, recorder: Any, mapper: Any) -> None:
        super().__init__(projection.name, store)
        self.projection = projection
        self.recorder = recorder
        self.mapper = mapper
        self.failure: ProjectionFailure | None = None
        self._mutex = threading.Lock()

    def catch_up(self, progress: Callable[[int], None] | None = None, until: int | None = None,
                 batch_size: int = BATCH_SIZE) -> int:
        """Process everything after the checkpoint (up to position ``until``, when given), at most
        ``batch_size`` events per transaction; return the number of events processed.

        Raises :class:`ProjectionStoppedError` on a failing event (and keeps raising it
        until the process is restarted: a poison event is never skipped)."""
        if not self.owned:
            raise RuntimeError(f"this process does not hold the runner lock of {self.projection.name}")
        with self._mutex:
            if self.failure is not None:
                raise ProjectionStoppedError(self.projection.name, self.failure)
            processed = 0
            carry: dict[str, Any] = {}  # kept from batch to batch of this call (see Tx.carry)
            while True:
                start = self.checkpoint()
                if until is not None and start >= until:
                    return processed
                batch = read_after(self.recorder, start, batch_size, stop=until)
                if not batch:
                    return processed
                done = self._apply(start, batch, carry)
                processed += done
                if progress:
                    progress(done)
                if done < len(batch):
                    assert self.failure is not None
                    raise ProjectionStoppedError(self.projection.name, self.failure)

    def _handle(self, tx: Any, notification: Any) -> None:
        if self.projection.raw:
            self.projection.handle(tx, notification, notification.id)
        elif wanted(notification.topic, self.projection.handles):  # the others are never decoded
            self.projection.handle(tx, self.mapper.to_domain_event(notification), notification.id)

    def _items(self, notifications: Sequence[Any]) -> list[tuple[Any, int]]:
        """What ``handle_batch`` is given for ``notifications``: each with its position, as stored
        (a raw projection) or decoded (only the events it acts on)."""
        if self.projection.raw:
            return [(n, n.id) for n in notifications]
        return decode_wanted(self.mapper, notifications, self.projection.handles)

    def _apply(self, start: int, batch: Sequence[Any], carry: dict[str, Any] | None = None) -> int:
        """Apply a batch in one transaction; on a failing event apply only what precedes it.
        ``carry``: what the projection kept from the previous batches (emptied if this one fails)."""
        name = self.projection.name
        try:
            items = self._items(batch)
            with self.store.transaction() as tx:
                tx.defer_inserts = True  # rows written per table, not per event (a failure is found below)
                tx.carry = carry
                self.projection.handle_batch(tx, items)
                tx.move_checkpoint(name, start, batch[-1].id)
            return len(batch)
        except Exception as exc:
            if carry is not None:
                carry.clear()  # it may hold what the rolled-back batch did
            failed_index, error = self._locate_failure(batch)
            if error is None:
                raise  # not reproducible event by event (e.g. the database went away): retry later
            bad = batch[failed_index]
            # The event's own error, as found event by event (the batch's may be about the batch).
            self.failure = ProjectionFailure(bad.id, bad.topic, f"{type(error).__name__}: {error}")
            log.error("projection.stopped", projection=name, position=bad.id, topic=bad.topic, error=str(error),
                      batch_error=None if error is exc else f"{type(exc).__name__}: {exc}")
            if failed_index:
                self._apply_prefix(start, batch[:failed_index])
            return failed_index

    def _apply_prefix(self, start: int, good: Sequence[Any]) -> None:
        """Commit the events before a failing one: as a batch (the same rows as event by event, which
        costs as much again as finding the failure did: a statement or more per event, up to a
        rebuild's 20,000), or event by event should the batch itself fail."""
        name = self.projection.name
        try:
            with self.store.transaction() as tx:
                tx.defer_inserts = True
                self.projection.handle_batch(tx, self._items(good))
                tx.move_checkpoint(name, start, good[-1].id)
        except Exception as exc:  # noqa: BLE001 - event by event, as the failure was found
            log.warning("projection.prefix_batch_failed", projection=name, error=f"{type(exc).__name__}: {exc}")
            with self.store.transaction() as tx:
                for notification in good:
                    self._handle(tx, notification)
                tx.move_checkpoint(name, start, good[-1].id)

    def _locate_failure(self, batch: Sequence[Any]) -> tuple[int, Exception | None]:
        """Index of the first event that fails and its error, found in a transaction that is rolled
        back (``len(batch)`` and None: every event succeeded this time)."""

        class _Rollback(Exception):
            pass

        index = 0
        try:
            with self.store.transaction() as tx:
                for index, notification in enumerate(batch):  # noqa: B007 - index read after the loop
                    self._handle(tx, notification)
                raise _Rollback
        except _Rollback:
            return len(batch), None  # every event succeeded this time: the failure was not the events'
        except Exception as exc:  # noqa: BLE001 - any error of an event stops the projection there
            return index, exc


class ProjectionEngine:
    """All projections of one process: set-up, catch-up, a background loop, waiting."""

    def __init__(
        self, projections: Sequence[Projection], store: ViewStore, app: Any, relays: Sequence[EventRelay] = ()
    ) -> None:
        self.store = store
        self.app = app
        self.mapper = fold_mapper(app.mapper)  # the same events as app.mapper decodes, faster (see decode.py)
        self.runners = {p.name: CatchUpRunner(p, store, app.recorder, self.mapper) for p in projections}
        self.relays = list(relays)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._relay_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        statements = [s for r in self.runners.values() for s in r.projection.schema_for(self.store.backend)]
        self.store.setup(statements)
        for name in self.runners:
            self.store.ensure_checkpoint(name)
        for relay in self.relays:
            relay.setup()

    def own(self) -> list[str]:
        """Try to take every runner and relay lock; return the names this process now runs."""
        owned = [name for name, runner in self.runners.items() if runner.try_own()]
        return owned + [relay.name for relay in self.relays if relay.try_own()]

    def release(self) -> None:
        for runner in self.runners.values():
            runner.release()
        for relay in self.relays:
            relay.release()

    # --------------------------------------------------------------- processing
    def catch_up(self) -> int:
        """Run every owned projection to the head; raise the first stop, after trying all."""
        return self._catch_up([r for r in self.runners.values() if r.owned])

    def _catch_up(self, runners: Sequence[CatchUpRunner], progress: Callable[[int], None] | None = None,
                  chase: bool = True, batch_size: int = BATCH_SIZE) -> int:
        """Fold ``runners`` to the head. The shared pass goes on past the head as it was at the start
        while events keep coming (``chase``), or stops there (the background loop: what comes during
        a pass is left to the next one, whose batch is then larger)."""
        # Each runner on its own goes no further than the head as it was before the shared pass:
        # events appended meanwhile (a stream of webhooks) are left to the next shared pass, so
        # the runners stay in step instead of each reading and decoding them separately.
        head = self.app.last_position()
        # Read once, and kept up to date by the shared pass: only the holder of a runner's lock moves
        # its checkpoint, and these runners' locks are held here (a checkpoint moved anyway fails the
        # batch's conditional UPDATE: a conflict, and the runners one by one read it again).
        positions = self.store.checkpoints()
        if all(r.failure is None and positions.get(r.projection.name, 0) >= head for r in runners):
            return 0  # nothing to fold (the idle poll): one read of the head, one of the checkpoints
        processed = self._catch_up_together([r for r in runners if r.failure is None], progress, positions,
                                            until=None if chase else head, batch_size=batch_size)  # fmt: skip
        stopped = None
        for runner in runners:  # whatever the shared pass left: each on its own (and stops, if it must)
            if runner.failure is None and positions.get(runner.projection.name, 0) >= head:
                continue  # at the head already: not read again one by one
            try:
                processed += runner.catch_up(progress, until=head, batch_size=batch_size)
            except ProjectionStoppedError as exc:
                stopped = stopped or exc
        if stopped:
            raise stopped
        return processed

    def _catch_up_together(self, runners: Sequence[CatchUpRunner], progress: Callable[[int], None] | None,
                           positions: dict[str, int], until: int | None = None, batch_size: int = BATCH_SIZE) -> int:
        """Fold the projections that stand at the same checkpoint in one pass over the log (up to
        position ``until``, when given): each batch is read and decoded once, and applied to all of
        them in one transaction that also moves their checkpoints (``positions``, updated here). The
        result is what each runner would write on its own (a fold sees only its own rows); it is just
        cheaper. On any failure the batch is rolled back and left to the runners one by one, which
        apply what precedes a failing event and stop there."""
        processed = 0
        with ExitStack() as held:
            for runner in sorted(runners, key=lambda r: r.projection.name):
                held.enter_context(runner._mutex)
            # After a full batch, the next one is read and decoded in another thread while this one is
            # written (the driver releases the GIL while it waits on the database), then used if it
            # starts where this one ended. A pass of a few events reads in this thread: no thread to
            # start and hand over to.
            reader: ThreadPoolExecutor | None = None
            ahead: tuple[tuple[int, Kinds], Future[_Read]] | None = None
            carry: dict[str, Any] = {}  # kept from batch to batch of this pass (see Tx.carry); any failure ends it
            while True:
                start = min((positions.get(r.projection.name, 0) for r in runners), default=0)
                group = [r for r in runners if positions.get(r.projection.name, 0) == start and r.failure is None]
                if len(group) < 2 or (until is not None and start >= until):
                    return processed
                # Only the events some projection of the group acts on are decoded: most of the log is
                # usage, which most projections ignore.
                kinds = wanted_kinds([r.projection for r in group])
                if ahead is not None and ahead[0] == (start, kinds):
                    batch, items, error = ahead[1].result()
                else:
                    batch, items, error = self._read(start, kinds, until, batch_size)
                ahead = None
                if not batch:
                    return processed
                if len(batch) == batch_size:  # more may follow
                    if reader is None:
                        reader = held.enter_context(ThreadPoolExecutor(1, thread_name_prefix="cs-read-ahead"))
                    ahead = ((batch[-1].id, kinds), reader.submit(self._read, batch[-1].id, kinds, until, batch_size))
                try:
                    if error is not None:
                        raise error
                    raw_items = [(n, n.id) for n in batch]
                    decoded = Selection(items, kinds)
                    with self.store.transaction() as tx:
                        tx.defer_inserts = True  # rows written per table, not per event
                        tx.carry = carry
                        for runner in group:
                            projection = runner.projection
                            projection.handle_batch(tx, raw_items if projection.raw else decoded.of(projection.handles))
                        tx.move_checkpoints([r.projection.name for r in group], start, batch[-1].id)
                except Exception as exc:  # noqa: BLE001 - the runners one by one find and report it
                    log.info("projections.shared_pass_fell_back", position=start, error=f"{type(exc).__name__}: {exc}")
                    return processed
                positions.update((r.projection.name, batch[-1].id) for r in group)
                processed += len(batch) * len(group)
                if progress:
                    progress(len(batch) * len(group))

    def _read(self, start: int, kinds: Kinds, until: int | None = None, batch_size: int = BATCH_SIZE) -> _Read:
        """The batch after ``start`` (up to ``until``, at most ``batch_size`` events), its events of
        ``kinds`` decoded with their positions, or the decoding error."""
        batch = read_after(self.app.recorder, start, batch_size, stop=until)
        try:
            return batch, decode_wanted(self.mapper, batch, kinds), None
        except Exception as exc:  # noqa: BLE001 - raised where the batch is applied, as before
            return batch, [], exc

    def ensure_current(self, timeout: float = 10.0) -> int:
        """Bring the views to the head of the log as of now (read-your-writes).

        Owned projections are caught up here; others are waited for, up to ``timeout``."""
        target = self.app.last_position()
        positions = self.store.checkpoints()
        if all(positions.get(name, 0) >= target for name in self.runners):
            return target  # the common case, in one read (a stopped projection is behind its poison event)
        self.catch_up()
        self.wait_for(target, timeout)
        return target

    def wait_for(self, position: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            positions = self.store.checkpoints()
            behind = {n: positions.get(n, 0) for n in self.runners if positions.get(n, 0) < position}
            if not behind:
                return
            for runner in self.runners.values():
                if runner.failure is not None:
                    raise ProjectionStoppedError(runner.projection.name, runner.failure)
            if time.monotonic() >= deadline:
                raise ViewsBehindError(
                    f"views have not reached event {position} after {timeout:.0f}s: "
                    + ", ".join(f"{n} at {p}" for n, p in behind.items())
                    + " (is the process that runs them, `cs serve` or `cs worker`, up?)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def status(self) -> list[dict[str, Any]]:
        head = self.app.last_position()
        positions = self.store.checkpoints()
        return [
            {
                "projection": name,
                "position": (cp := positions.get(name, 0)),
                "lag": head - cp,
                "owned": runner.owned,
                "stopped_at": runner.failure.position if runner.failure else None,
                "error": runner.failure.error if runner.failure else None,
            }
            for name, runner in self.runners.items()
        ]

    def rebuild(self, names: Sequence[str] | None = None, progress: Callable[[int], None] | None = None,
                batch_size: int = REBUILD_BATCH_SIZE) -> int:
        """Drop and refill the named projections (all by default) from the whole log, ``batch_size``
        events per transaction (the rows do not depend on it).

        Secondary indexes (``CREATE INDEX`` statements of the schemas) are built once the tables
        are filled, not maintained row by row while they fill; if the rebuild stops early they are
        built all the same (and ``setup`` builds any that are missing)."""
        selected = [self.runners[n] for n in (names or list(self.runners))]
        indexes: list[str] = []
        for runner in selected:
            if not runner.owned and not runner.try_own():
                raise RuntimeError(
                    f"projection {runner.projection.name} is being run by another process; stop it first"
                )
            with self.store.transaction() as tx:
                runner.projection.drop(tx)
                for statement in runner.projection.schema_for(self.store.backend):
                    if statement.lstrip().upper().startswith("CREATE INDEX"):
                        indexes.append(statement)
                    else:
                        tx.execute(statement)
                tx.execute("UPDATE cs_checkpoints SET position = 0 WHERE name = ?", (runner.projection.name,))
            runner.failure = None
        try:
            with collector_paused():
                return self._catch_up(selected, progress, batch_size=batch_size)
        finally:
            with self.store.transaction() as tx:
                for statement in indexes:
                    tx.execute(statement)

    # ------------------------------------------------------------ background loop
    def start(self, poll_interval: float = 0.5, min_interval: float = MIN_PASS_INTERVAL,
              busy_interval: float | None = None) -> None:
        """Keep owned projections current in a daemon thread; retry unowned locks.

        Passes start at most every ``min_interval`` seconds: under a stream of small writes
        (webhooks) a wake() per write would fold a few events per pass, and a pass has a fixed
        cost (checkpoints, one transaction over every projection, a commit); waiting a little
        folds them in fewer, larger batches. A lone write is folded at once; reads stay
        current anyway (``ensure_current`` folds what is missing itself).

        ``busy_interval`` (seconds; `cs worker`, where no wake() reaches the loop): each pass stops
        at the head as it was when the pass started, and after a pass that folded something the
        next one starts ``busy_interval`` later instead of at the next poll. Without it a pass goes
        on while events keep coming, and waits a whole poll once one read finds nothing new, which
        under a steady stream of webhooks made passes of a few events alternate with bursts of a
        poll's worth of them."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            last_pass = float("-inf")
            while not self._stop.is_set():
                rest = last_pass + min_interval - time.monotonic()
                if rest > 0 and self._stop.wait(rest):
                    break
                last_pass = time.monotonic()
                self._wake.clear()  # before the work: a wake() during it makes the wait return at once
                for runner in self.runners.values():
                    if not runner.owned:
                        runner.try_own()
                folded = 0
                try:
                    folded = self._catch_up([r for r in self.runners.values() if r.owned], chase=busy_interval is None)
                except ProjectionStoppedError:
                    pass  # logged once by the runner; reads report it
                except Exception as exc:  # database unavailable: keep trying, loudly
                    log.warning("projections.catch_up_failed", error=str(exc))
                self._wake.wait(busy_interval if folded and busy_interval is not None else poll_interval)

        def relay_loop() -> None:  # its own thread: a slow sink never delays the views
            while not self._stop.is_set():
                for relay in self.relays:
                    if not relay.owned:
                        relay.try_own()
                    relay.pump()  # never raises: a relay backs off on its own
                self._stop.wait(poll_interval)

        self._thread = threading.Thread(target=loop, name="cs-projections", daemon=True)
        self._thread.start()
        if self.relays:
            self._relay_thread = threading.Thread(target=relay_loop, name="cs-relays", daemon=True)
            self._relay_thread.start()

    def wake(self) -> None:
        """Fold what was just written now rather than at the next poll. A process that runs no
        projection (beside `cs worker`) has nothing to fold: a pass would only try every runner
        lock again, which its loop does at each poll anyway."""
        if any(runner.owned for runner in self.runners.values()):
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._relay_thread):
            if thread is not None:
                thread.join(timeout=10)
        self._thread = self._relay_thread = None
        self.release()
