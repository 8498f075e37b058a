"""The catch-up runner on both backends: rebuild == incremental, poison events, one runner."""

from __future__ import annotations

import io
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from events.commands import CommandMeta
from mcp_server.services import Services, open_services
from projections.runner import ProjectionStoppedError
from projections.usage import FEATURES, USERS, UsageProjection

META = CommandMeta(actor="test", source="test")


def _populate(services: Services) -> None:
    app = services.app
    for i in range(12):
        app.register_customer(
            {
                "external_key": f"c{i:02d}",
                "name": f"Customer {i}",
                "arr": 1000 * i,
                "seats": i,
                "renewal_date": f"2027-0{1 + i % 9}-15",
                "contact_name": f"Person {i}",
                "contact_email": f"p{i}@c{i}.example",
            },
            META,
        )
    for i in range(0, 12, 3):
        app.update_customer(f"c{i:02d}", {"arr": 500 + i, "tier": "growth", "owner": "Dana"}, META)
    app.churn_customer("c05", {"churned_on": "2026-10-01", "reason": "budget"}, META)


def _rows(services: Services) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with services.store.transaction() as tx:
        for runner in services.engine.runners.values():
            # the users and the feature uses of a day, a row each
            views = (USERS, FEATURES) if isinstance(runner.projection, UsageProjection) else ()
            for table in (*runner.projection.tables, *views):
                rows = tx.fetchall(f"SELECT * FROM {table}")
                out[table] = sorted(rows, key=lambda r: sorted((k, str(v)) for k, v in r.items()))
    return out


def test_rebuild_reproduces_every_row(services: Services) -> None:
    _populate(services)
    services.engine.catch_up()  # processed incrementally, batch by batch as written
    incremental = _rows(services)
    assert len(incremental["cs_customers_v1"]) == 12
    assert len(incremental["cs_timeline_v1"]) == services.app.last_position()

    with services.store.transaction() as tx:
        for runner in services.engine.runners.values():
            runner.projection.drop(tx)
    processed = services.engine.rebuild()

    assert processed == len(services.engine.runners) * services.app.last_position()
    assert _rows(services) == incremental


def test_incremental_in_small_steps_equals_one_pass(services: Services) -> None:
    app = services.app
    app.register_customer({"external_key": "a", "name": "A", "arr": 1}, META)
    services.engine.catch_up()
    app.update_customer("a", {"arr": 2}, META)
    services.engine.catch_up()
    app.update_customer("a", {"arr": 3, "seats": 4}, META)
    services.engine.catch_up()
    stepwise = _rows(services)
    services.engine.rebuild()
    assert _rows(services) == stepwise


def test_poison_event_stops_the_runner_and_keeps_the_checkpoint(services: Services) -> None:
    app = services.app
    app.register_customer({"external_key": "ok", "name": "Fine"}, META)
    good_head = app.last_position()
    # A stored event whose topic resolves to no class: no projection can decode it.
    poison = StoredEvent(
        originator_id=app.resolve("ok"),
        originator_version=2,
        topic="events.domain:Customer.Vanished",
        state=b"{}",
    )
    app.recorder.insert_events([poison])
    poison_position = app.last_position()
    app.register_customer({"external_key": "after", "name": "After"}, META)

    with pytest.raises(ProjectionStoppedError) as caught:
        services.engine.catch_up()

    assert caught.value.failure.position == poison_position
    decoding = {n: r for n, r in services.engine.runners.items() if not r.projection.raw}  # raw: audit chain
    for name, runner in decoding.items():
        assert runner.checkpoint() == good_head, name
    # Never skipped: trying again stops at the same place, and reads say why.
    with pytest.raises(ProjectionStoppedError):
        services.engine.catch_up()
    with pytest.raises(ProjectionStoppedError, match=f"stopped at event {poison_position}"):
        services.engine.ensure_current(timeout=1)
    assert all(r.checkpoint() == good_head for r in decoding.values())
    # The audit chain links stored bytes, so the poison event is linked like any other.
    assert services.engine.runners["audit_chain_v1"].checkpoint() == app.last_position()


def test_an_event_stops_only_the_projections_that_act_on_its_class(services: Services) -> None:
    """Only the events a projection acts on (its ``handles``) are decoded for it: a usage event
    that cannot be decoded stops the usage view and the late-events view (which reads every event)
    at it, while the projections that ignore usage fold past it, in the shared pass and one by one."""
    from uuid import uuid4

    from eventsourcing.utils import get_topic

    from events.signals import UsageDay

    app = services.app
    app.register_customer({"external_key": "ok", "name": "Fine"}, META)
    good_head = app.last_position()
    poison = StoredEvent(originator_id=uuid4(), originator_version=2, topic=get_topic(UsageDay.Counted),
                         state=b"{not json")  # fmt: skip
    app.recorder.insert_events([poison])
    poison_position = app.last_position()
    app.register_customer({"external_key": "after", "name": "After"}, META)
    head = app.last_position()
    reads_usage = {"usage_v6", "late_event_days_v1"}

    for fold in (services.engine.catch_up, services.engine.rebuild):
        with pytest.raises(ProjectionStoppedError) as caught:
            fold()
        assert caught.value.failure.position == poison_position
        for name, runner in services.engine.runners.items():
            if name in reads_usage:
                assert (runner.checkpoint(), runner.failure.position) == (good_head, poison_position), name
            else:
                assert (runner.checkpoint(), runner.failure) == (head, None), name
        with services.store.snapshot() as tx:  # folded past it: the customer registered after it
            assert tx.fetchone("SELECT COUNT(*) AS n FROM cs_customers_v1")["n"] == 2
        for runner in services.engine.runners.values():
            runner.failure = None  # as a restart would


def test_the_events_before_a_failing_one_are_committed_even_when_their_batch_fails(services: Services) -> None:
    """The events before a failing one are committed as one batch; should that batch fail too, they
    are committed event by event, as the failure was found: a projection whose handle_batch refuses
    any batch of more than one event still has every row before the poison and stops at it, with
    the poison's own error (not the batch's)."""
    from projections.base import Projection
    from projections.runner import CatchUpRunner

    app = services.app
    for key in ("a", "b", "c", "d"):
        app.register_customer({"external_key": key, "name": key.upper()}, META)
    positions = [n.id for n in app.recorder.select_notifications(start=0, limit=100)]
    poison = positions[len(positions) // 2]

    class Fussy(Projection):
        name, tables, raw = "fussy_test_v1", ("t_fussy",), True

        def schema(self) -> list[str]:
            return ["CREATE TABLE IF NOT EXISTS t_fussy (position BIGINT PRIMARY KEY)"]

        def handle(self, tx: Any, event: Any, position: int) -> None:
            if position == poison:
                raise ValueError("poison")
            tx.execute("INSERT INTO t_fussy (position) VALUES (?)", (position,))

        def handle_batch(self, tx: Any, items: Any) -> None:
            if len(items) > 1:
                raise RuntimeError("no batches here")
            for event, position in items:
                self.handle(tx, event, position)

    projection = Fussy()
    services.store.setup(projection.schema())
    services.store.ensure_checkpoint(projection.name)
    runner = CatchUpRunner(projection, services.store, app.recorder, services.engine.mapper)
    assert runner.try_own()
    try:
        with pytest.raises(ProjectionStoppedError, match=f"stopped at event {poison} .*: ValueError: poison"):
            runner.catch_up()
        with services.store.snapshot() as tx:
            rows = [int(r[0]) for r in tx.rows("SELECT position FROM t_fussy ORDER BY position")]
        assert rows == [p for p in positions if p < poison]
        assert runner.checkpoint() == rows[-1] and runner.failure.position == poison
    finally:
        runner.release()


def test_rebuild_leaves_the_garbage_collector_as_it_found_it(services: Services) -> None:
    """The rebuild folds with the cyclic collector off (projections/runner.py) and restores it, also
    when a poison event stops it; a collector switched off by the caller stays off."""
    import gc

    app = services.app
    app.register_customer({"external_key": "ok", "name": "Fine"}, META)
    assert gc.isenabled()
    services.engine.rebuild()
    assert gc.isenabled()
    gc.disable()
    try:
        services.engine.rebuild()
        assert not gc.isenabled()
    finally:
        gc.enable()
    app.recorder.insert_events([StoredEvent(originator_id=app.resolve("ok"), originator_version=2,
                                            topic="events.domain:Customer.Vanished", state=b"{}")])  # fmt: skip
    with pytest.raises(ProjectionStoppedError):
        services.engine.rebuild()
    assert gc.isenabled()


def test_only_one_process_runs_a_projection(services: Services) -> None:
    assert all(r.owned for r in services.engine.runners.values())
    with open_services(services.settings, run_projections=True) as second:
        assert second.engine.own() == []
        services.app.register_customer({"external_key": "x", "name": "X"}, META)
        # The second process does not run them; it waits for the owner's checkpoint.
        services.engine.catch_up()
        second.engine.wait_for(services.app.last_position(), timeout=5)
        assert second.profiles.get(second.app.resolve("x")) is not None
    services.engine.release()
    with open_services(services.settings, run_projections=True) as third:
        assert sorted(third.engine.own()) == sorted(services.engine.runners)


# ------------------------------------------------------------ every signal: batch == event by event == rebuild
def _populate_signals(services: Services) -> None:
    """Accounts, usage imported in two files (the second adds users to days the first opened, and
    one account matches no customer), tickets opened then solved and rated, NPS answers, e-mails;
    the views folded after each file, so later batches add to rows of earlier ones."""
    from tests.integration.test_health_model import (
        ZTicket, account, at, daily_usage, load, load_customers, nps_csv, sendgrid_json, zendesk_json, FEATURES)  # fmt: skip

    load_customers(services, [account("acme"), account("globex"), account("initech", mixpanel=False)])
    first, last = date(2026, 2, 2), date(2026, 2, 6)
    lines = daily_usage("acme", first, last, 3) + daily_usage("globex", first, last, 2, FEATURES[:2])
    load(services, "mixpanel", "\n".join(lines), "usage-1.jsonl")
    more = (daily_usage("acme", first, last + timedelta(days=2), 5, FEATURES[1:])  # users 3-4 new, 0-2 again
            + daily_usage("ghost", first, first, 2))  # fmt: skip
    load(services, "mixpanel", "\n".join(more), "usage-2.jsonl")
    opened = [ZTicket(1, "acme", at(first), at(first)), ZTicket(2, "globex", at(first, 13), at(first, 13), priority="high")]
    load(services, "zendesk", zendesk_json(opened), "tickets-1.json")
    later = [ZTicket(1, "acme", at(first), at(last), status="solved", rating="good"),
             ZTicket(2, "globex", at(first, 13), at(last, 14), status="pending", priority="urgent")]  # fmt: skip
    load(services, "zendesk", zendesk_json(later), "tickets-2.json")
    load(services, "nps", nps_csv([("r1", "acme", 9, at(first)), ("r2", "globex", 4, at(last))]), "nps.csv")
    load(services, "sendgrid", sendgrid_json([("e1", "acme", "delivered", at(first)), ("e2", "globex", "bounce", at(last))]),
         "sendgrid.json")  # fmt: skip


def _users_from_events(services: Services) -> set[tuple[str, str, str]]:
    """(customer_id, day, user_hash) for every user a matched usage day counted, read from the log."""
    from events.signals import UsageDay

    days: dict[Any, tuple[str | None, str]] = {}
    users: set[tuple[str, str, str]] = set()
    for notification in services.app.recorder.select_notifications(start=0, limit=10**6):
        event = services.app.mapper.to_domain_event(notification)
        if isinstance(event, UsageDay.Opened):
            days[event.originator_id] = (event.customer_id, event.day)
        elif isinstance(event, UsageDay.Counted):
            cid, day = days[event.originator_id]
            if cid is not None:
                users |= {(cid, day, u) for u in event.users}
    return users


def test_rebuild_and_event_by_event_reproduce_every_signal_row(services: Services) -> None:
    """Signals of every connector, a scorecard and a health override: rebuilt in one pass (where each
    projection is given only the events it ``handles``) and folded by ``handle`` from every event,
    the rows are those folded as the events came."""
    _populate_signals(services)
    services.app.configure_scorecard({"weights": {"support": 25}}, META)
    services.app.override_health("acme", {"band": "red", "reason": "champion left",
                                          "expires_at": datetime.now(timezone.utc) + timedelta(days=3)}, "test", META)  # fmt: skip
    services.engine.ensure_current()
    incremental = _rows(services)
    assert incremental["cs_scorecard_history_v1"] and incremental["cs_overrides_v1"]
    assert len(incremental["cs_usage_days_v6"]) == 2 * 5 + 2 + 1  # acme 7 days, globex 5, ghost 1 (unmatched)
    assert incremental["cs_ticket_history_v1"] and incremental["cs_timeline_v1"] and incremental["cs_email_events_v1"]

    services.engine.rebuild()  # each batch folded by handle_batch
    assert _rows(services) == incremental
    # Batch boundaries anywhere (a usage day counted across batches, a ticket opened in one and
    # solved in the next; the read-ahead of full batches): the same rows.
    for batch_size in (1, 2, 7):
        services.engine.rebuild(batch_size=batch_size)
        assert _rows(services) == incremental, batch_size

    # The same log folded one event at a time by handle (what a runner does to find a poison event).
    engine = services.engine
    with services.store.transaction() as tx:
        for runner in engine.runners.values():
            runner.projection.drop(tx)
            for statement in runner.projection.schema_for(services.store.backend):
                tx.execute(statement)
        for notification in services.app.recorder.select_notifications(start=0, limit=10**6):
            event = services.app.mapper.to_domain_event(notification)
            for runner in engine.runners.values():
                runner.projection.handle(tx, notification if runner.projection.raw else event, notification.id)
    assert _rows(services) == incremental


def test_a_pass_of_many_batches_after_an_earlier_pass_folds_the_same_usage_rows(services: Services) -> None:
    """A pass keeps the usage numbering from batch to batch (``Tx.carry``); a pass that starts where
    an earlier one stopped must still read the numbering of customers its later batches first
    touch: the first half of the log in one pass, the rest in batches of two events, gives the rows
    of one pass over everything."""
    _populate_signals(services)
    services.engine.ensure_current()
    expected = _rows(services)
    runner = services.engine.runners["usage_v6"]
    head = services.app.last_position()
    for split in (head // 3, head // 2, 2 * head // 3):
        with services.store.transaction() as tx:
            runner.projection.drop(tx)
            for statement in runner.projection.schema_for(services.store.backend):
                tx.execute(statement)
            tx.execute("UPDATE cs_checkpoints SET position = 0 WHERE name = ?", (runner.projection.name,))
        runner.catch_up(until=split)
        runner.catch_up(batch_size=2)
        assert runner.checkpoint() == head
        assert _rows(services) == expected, split


def test_usage_users_view_holds_one_row_per_user_and_day_counted(services: Services) -> None:
    """The users of a day are stored as one array per day; the view shows the rows the former
    table held: one per (customer, day, user) counted by the log, across imports, none for unmatched."""
    _populate_signals(services)
    expected = _users_from_events(services)
    assert len(expected) == 5 * 7 + 2 * 5  # acme: 5 users (3, then 2 more) on 7 days; globex: 2 users on 5 days
    for rebuilt in (False, True):
        if rebuilt:
            services.engine.rebuild()
        with services.store.snapshot() as tx:
            rows = tx.fetchall(f"SELECT customer_id, day, user_hash FROM {USERS}")
        assert len(rows) == len(expected)  # no duplicates
        assert {(r["customer_id"], r["day"], r["user_hash"]) for r in rows} == expected


def test_bulk_insert_keeps_bit_sets_as_given(services: Services) -> None:
    """The usage bit sets (bytes: empty, with zero bytes, with COPY's markers, long) come back as
    given through Tx.insert_many at COPY size, straight and through ON CONFLICT, and read back
    as the integers they were made from."""
    from projections.store import BULK_ROWS
    from projections.usage import bits_bytes, bits_of

    numbers = [0, 1, 255, 256, 1 << 63, (1 << 200) | 1, int.from_bytes(b"\\N\t\n\\.\x00", "little")]
    rows = [(i, bits_bytes(numbers[i % len(numbers)] << (i % 3))) for i in range(BULK_ROWS + 50)]
    bits_type = "BYTEA" if services.store.backend == "postgres" else "BLOB"
    with services.store.transaction() as tx:
        tx.execute(f"CREATE TABLE t_bits (id BIGINT PRIMARY KEY, bits {bits_type} NOT NULL)")
        tx.insert_many("t_bits", ("id", "bits"), rows)
        tx.insert_many("t_bits", ("id", "bits"), [(i, bits_bytes(bits_of(b) | 2)) for i, b in rows[:BULK_ROWS]],
                       "ON CONFLICT (id) DO UPDATE SET bits = excluded.bits")  # fmt: skip
        got = tx.rows("SELECT id, bits FROM t_bits ORDER BY id")
    assert [(i, bytes(b)) for i, b in got] == [(i, bits_bytes(bits_of(b) | 2) if i < BULK_ROWS else b) for i, b in rows]
    assert [bits_of(b) for _, b in got][BULK_ROWS:] == [numbers[i % len(numbers)] << (i % 3) for i in range(BULK_ROWS, BULK_ROWS + 50)]


def test_bulk_insert_keeps_every_value_as_given(services: Services) -> None:
    """Tx.insert_many at COPY size (on PostgreSQL COPY straight into the table, or through a temporary
    table with ON CONFLICT): text with tabs, newlines, backslashes and COPY's markers, integers,
    booleans, floats and NULL come back as given."""
    from projections.store import BULK_ROWS

    tricky = ["plain", "tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "\\.", "", "é ☃ 𝄞", "a\\tb"]
    rows = [(i, tricky[i % len(tricky)], None if i % 7 == 0 else i * 10**12, i % 2 == 0, None if i % 5 else 0.1 * i)
            for i in range(BULK_ROWS + 50)]  # fmt: skip
    with services.store.transaction() as tx:
        tx.execute("CREATE TABLE t_bulk (id BIGINT PRIMARY KEY, txt TEXT, big BIGINT, flag BOOLEAN, x DOUBLE PRECISION)")
        tx.insert_many("t_bulk", ("id", "txt", "big", "flag"), [r[:4] for r in rows])
        tx.execute("CREATE TABLE t_bulk_f (id BIGINT PRIMARY KEY, x DOUBLE PRECISION)")
        tx.insert_many("t_bulk_f", ("id", "x"), [(r[0], r[4]) for r in rows])
        tx.insert_many("t_bulk", ("id", "txt", "big", "flag"), [r[:4] for r in rows[:BULK_ROWS]],
                       "ON CONFLICT (id) DO UPDATE SET txt = excluded.txt || '!'")  # fmt: skip
        got = tx.fetchall("SELECT id, txt, big, flag FROM t_bulk ORDER BY id")
        floats = tx.fetchall("SELECT id, x FROM t_bulk_f ORDER BY id")
    assert [(r["id"], r["txt"], r["big"], bool(r["flag"])) for r in got] == [
        (i, t + "!" if i < BULK_ROWS else t, b, f) for i, t, b, f, _ in rows]  # fmt: skip
    assert [(r["id"], r["x"]) for r in floats] == [(r[0], r[4]) for r in rows]


# ------------------------------------------------------------ tickets: one pass == batches of any size == event by event
def _refold(services: Services, size: int | None) -> dict[str, list[dict[str, Any]]]:
    """Every view dropped and folded again from the whole log: in slices of ``size`` events, each
    slice in its own transaction with its rows deferred as the runner writes them (handle_batch),
    or (``size`` None) one event at a time through handle, as a runner locates a failing event."""
    engine = services.engine
    log = services.app.recorder.select_notifications(start=0, limit=10**6)
    with services.store.transaction() as tx:
        for runner in engine.runners.values():
            runner.projection.drop(tx)
            for statement in runner.projection.schema_for(services.store.backend):
                tx.execute(statement)
    if size is None:
        with services.store.transaction() as tx:
            for notification in log:
                event = services.app.mapper.to_domain_event(notification)
                for runner in engine.runners.values():
                    runner.projection.handle(tx, notification if runner.projection.raw else event, notification.id)
        return _rows(services)
    for first in range(0, len(log), size):
        part = log[first : first + size]
        events = [(services.app.mapper.to_domain_event(n), n.id) for n in part]
        with services.store.transaction() as tx:
            tx.defer_inserts = True
            for runner in engine.runners.values():
                runner.projection.handle_batch(tx, [(n, n.id) for n in part] if runner.projection.raw else events)
    return _rows(services)


def _assert_every_fold_gives(services: Services, incremental: dict[str, list[dict[str, Any]]]) -> None:
    """The whole log rebuilt in one pass, refolded in slices of 1, 2, 3 and 7 events and event by
    event: each time every view's rows are ``incremental``."""
    services.engine.rebuild()
    assert _rows(services) == incremental
    for size in (1, 2, 3, 7):
        assert _refold(services, size) == incremental, size
    assert _refold(services, None) == incremental


def test_ticket_views_are_the_same_in_one_pass_in_batches_of_any_size_and_event_by_event(services: Services) -> None:
    """Tickets opened, changed, solved, reopened and rated, several changes of one ticket in one
    import and changes of tickets opened in earlier imports: the views (the tickets view's rows
    among them, which a batch writes in one UPDATE per set of columns and one insert) are the same
    folded after each import, in one pass, in slices of 1 to 7 events, and event by event."""
    from connectors.service import Ingestion
    from projections.profile import CustomerDirectory
    from tests.integration.test_health_model import ZTicket, account, at, load_customers, zendesk_json

    load_customers(services, [account("acme"), account("globex")])
    day = date(2026, 2, 2)
    imports = [
        [ZTicket(1, "acme", at(day), at(day)), ZTicket(2, "globex", at(day, 13), at(day, 13), priority="high"),
         ZTicket(3, "acme", at(day, 14), at(day, 15), status="solved", rating="good")],  # opened, solved, rated at once
        [ZTicket(1, "acme", at(day), at(day, 16), status="pending", priority="urgent"),
         ZTicket(2, "globex", at(day, 13), at(day, 17), status="solved", rating="bad"),
         ZTicket(4, "globex", at(day, 18), at(day, 18), priority=None)],
        [ZTicket(2, "globex", at(day, 13), at(day + timedelta(days=1)), status="open", rating="bad"),  # reopened
         ZTicket(1, "acme", at(day), at(day + timedelta(days=1), 9), status="solved", rating="good"),
         ZTicket(5, "unknown-org", at(day, 19), at(day, 20), status="pending")],  # matches no customer
    ]  # fmt: skip
    incremental: dict[str, list[dict[str, Any]]] = {}
    for number, tickets in enumerate(imports):  # recorded without folding in between (the ingestion reads no view)
        ingestion = Ingestion(services.app, CustomerDirectory(services.store), services.settings, actor="test")
        report = ingestion.import_file("zendesk", io.StringIO(zendesk_json(tickets)), f"tickets-{number}.json")
        assert not report.rejected, report.as_dict()
        services.engine.catch_up()  # a pass per import: later imports change rows of earlier passes
        incremental = _rows(services)
    kinds = Counter(type(services.app.mapper.to_domain_event(n)).__qualname__
                    for n in services.app.recorder.select_notifications(start=0, limit=10**6))  # fmt: skip
    assert all(kinds[f"Ticket.{k}"] for k in ("Opened", "Changed", "Solved", "Reopened", "Rated")), kinds
    tickets = {r["vendor_id"]: r for r in incremental["cs_tickets_v1"]}
    assert tickets["1"]["status"] == "solved" and tickets["1"]["priority"] == "normal" and tickets["1"]["solved_at"]
    assert tickets["2"]["status"] == "open" and tickets["2"]["solved_at"] is None and tickets["2"]["csat"] == 0.0
    assert tickets["3"]["solved_at"] and tickets["3"]["csat"] == 1.0 and tickets["5"]["customer_id"] is None

    _assert_every_fold_gives(services, incremental)


def test_profile_view_is_the_same_in_one_pass_in_batches_of_any_size_and_event_by_event(services: Services) -> None:
    """Customers registered (with and without a contact), profiles and contracts changed, contacts
    added (a new primary one demotes the others), removed and added again, a churn, across several
    passes: the profile view (which a batch folds in memory from the rows it touches) is the same
    folded after each step, in one pass, in slices of 1 to 7 events, and event by event."""
    from datetime import UTC, datetime

    app = services.app
    at = datetime(2026, 3, 2, 9, tzinfo=UTC)
    meta = {"actor": "test", "source": "test", "source_id": "t", "occurred_at": at}

    def contacts_of(key: str, *changes: tuple[str, str, bool | None]) -> None:
        """Add (primary True/False) or remove (None) contacts of one customer in one append."""
        customer = app.get_customer(key)
        for contact_id, name, primary in changes:
            if primary is None:
                customer.remove_contact(contact_id=contact_id, **meta)
            else:
                customer.add_contact(contact_id=contact_id, name=name, email=f"{name}@{key}.example", role=None,
                                     primary=primary, **meta)  # fmt: skip
        app.save(customer)

    steps = [
        lambda: [app.register_customer({"external_key": k, "name": k.title(), "arr": 100.0 * n, "seats": n,
                                        **({"contact_name": f"First {k}"} if n % 2 else {})}, META)
                 for n, k in enumerate(("ada", "bob", "cyd", "dee"), start=1)],  # fmt: skip
        lambda: contacts_of("ada", ("a2", "Second", False), ("a3", "Third", True)),  # a3 demotes the first
        lambda: (app.update_customer("bob", {"arr": 250.5, "tier": "growth"}, META),
                 contacts_of("bob", ("b2", "Other", True), ("b2", "", None), ("b3", "Next", False))),
        lambda: (contacts_of("ada", ("a3", "", None), ("a3", "Back", True)),  # removed, then added again
                 app.churn_customer("cyd", {"churned_on": "2026-03-01", "reason": "budget"}, META),
                 app.update_customer("dee", {"seats": 40, "owner": "Dana"}, META)),
    ]
    incremental: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        step()
        services.engine.catch_up()  # a pass per step: later steps change rows of earlier passes
        incremental = _rows(services)
    contacts = {r["contact_id"]: r for r in incremental["cs_contacts_v1"]}
    assert "b2" not in contacts and bool(contacts["a3"]["is_primary"]) and not contacts["a2"]["is_primary"]
    assert sum(bool(r["is_primary"]) for r in contacts.values() if r["customer_id"] == str(app.resolve("ada"))) == 1
    customers = {r["external_key"]: r for r in incremental["cs_customers_v1"]}
    assert customers["bob"]["arr"] == 250.5 and customers["cyd"]["status"] == "churned" and customers["dee"]["seats"] == 40

    _assert_every_fold_gives(services, incremental)


def test_a_contact_added_twice_stops_the_profile_view_at_that_event(services: Services) -> None:
    """A batch the profile view cannot fold (a contact id added twice: the row's primary key) stops
    the projection at that event, as folding it event by event does, with what precedes it kept."""
    from datetime import UTC, datetime

    app = services.app
    app.register_customer({"external_key": "ada", "name": "Ada"}, META)
    services.engine.catch_up()
    customer = app.get_customer("ada")
    meta = {"actor": "test", "source": "test", "source_id": "t", "occurred_at": datetime(2026, 3, 2, tzinfo=UTC)}
    customer.add_contact(contact_id="c1", name="One", email=None, role=None, primary=True, **meta)
    customer.add_contact(contact_id="c2", name="Two", email=None, role=None, primary=False, **meta)
    customer.add_contact(contact_id="c1", name="Again", email=None, role=None, primary=False, **meta)
    recordings = app.save(customer)
    with pytest.raises(ProjectionStoppedError) as stopped:
        services.engine.catch_up()
    assert stopped.value.name == "customer_profile_v1"
    assert stopped.value.failure.position == recordings[-1].notification.id  # the second c1, not before
    with services.store.transaction() as tx:
        names = sorted(r["name"] for r in tx.fetchall("SELECT name FROM cs_contacts_v1"))
    assert names == ["One", "Two"]


def test_inserts_of_a_few_rows_keep_every_value_as_given(services: Services) -> None:
    """Tx.insert_many below and from COPY_ROWS rows (on PostgreSQL a statement per row, then a COPY
    straight into the table: what a pass of a few webhooks writes) stores the values as given."""
    from projections.store import COPY_ROWS

    tricky = ["tab\there", "line\nbreak", "back\\slash", "\\N", "\\.", "", "é ☃ 𝄞"]
    with services.store.transaction() as tx:
        tx.execute("CREATE TABLE t_few (id BIGINT PRIMARY KEY, txt TEXT, big BIGINT, flag BOOLEAN, x DOUBLE PRECISION)")
        first, expected = 0, []
        for count in (1, COPY_ROWS - 1, COPY_ROWS, COPY_ROWS + 1, 7):
            rows = [(first + i, tricky[(first + i) % len(tricky)], None if i % 2 else (first + i) * 10**12,
                     i % 3 == 0, None if i % 4 == 1 else 0.1 * (first + i)) for i in range(count)]  # fmt: skip
            tx.insert_many("t_few", ("id", "txt", "big", "flag", "x"), rows)
            expected += rows
            first += count
        got = tx.rows("SELECT id, txt, big, flag, x FROM t_few ORDER BY id")
    assert [(i, t, b, bool(f), x) for i, t, b, f, x in got] == expected


def test_checkpoints_of_a_pass_move_together_or_not_at_all(services: Services) -> None:
    """One statement moves every checkpoint of a shared pass; when one of them is not where the
    pass started (another runner moved it), nothing of the pass is kept."""
    from projections.store import CheckpointConflictError

    store = services.store
    names = ["t_pass_a", "t_pass_b", "t_pass_c"]
    for name in names:
        store.ensure_checkpoint(name)
    with store.transaction() as tx:
        tx.move_checkpoints(names, 0, 5)
    assert [store.checkpoint(n) for n in names] == [5, 5, 5]
    with store.transaction() as tx:
        tx.execute("CREATE TABLE t_pass_rows (id BIGINT PRIMARY KEY)")
        tx.move_checkpoint("t_pass_b", 5, 7)
    with pytest.raises(CheckpointConflictError), store.transaction() as tx:
        tx.insert("t_pass_rows", ("id",), (1,))
        tx.move_checkpoints(names, 5, 9)
    assert [store.checkpoint(n) for n in names] == [5, 7, 5]
    assert store.read("SELECT COUNT(*) FROM t_pass_rows") == [(0,)]  # the pass's rows were rolled back with it


def test_a_log_longer_than_a_batch_folds_as_in_slices(services: Services) -> None:
    """More events than one batch: the shared pass reads the second batch ahead in another thread
    while it writes the first (a pass of a few events reads in its own thread). Same views as
    slices of the log folded one after the other, and every checkpoint at the head."""
    from connectors.service import Ingestion
    from projections.profile import CustomerDirectory
    from projections.runner import BATCH_SIZE
    from tests.integration.test_health_model import ZTicket, account, at, load_customers, zendesk_json

    load_customers(services, [account("acme"), account("globex")])
    first = date(2026, 2, 2)
    tickets = [ZTicket(i, ("acme", "globex")[i % 2], at(first), at(first + timedelta(days=i % 20), i % 24),
                       status=("new", "open", "solved")[i % 3]) for i in range(1, BATCH_SIZE + 300)]  # fmt: skip
    ingestion = Ingestion(services.app, CustomerDirectory(services.store), services.settings, actor="test")
    assert not ingestion.import_file("zendesk", io.StringIO(zendesk_json(tickets)), "tickets.json").rejected
    head = services.app.last_position()
    assert head - services.store.checkpoint("support_v1") > BATCH_SIZE

    services.engine.catch_up()
    assert set(services.store.checkpoints().values()) == {head}
    folded = _rows(services)
    assert len(folded["cs_tickets_v1"]) == len(tickets)
    assert _refold(services, 1_000) == folded


def test_a_pass_bounded_at_a_position_folds_up_to_it_and_the_next_one_goes_on(services: Services) -> None:
    """The background loop of `cs worker` folds each pass up to the head as it was when the pass
    started (``until``): the checkpoints stop exactly there, and the next pass folds the rest; the
    views are then those of one pass over the whole log."""
    _populate(services)
    engine = services.engine
    runners = list(engine.runners.values())
    middle, head = services.app.last_position() // 2, services.app.last_position()
    positions = services.store.checkpoints()
    engine._catch_up_together(runners, None, positions, until=middle)
    assert set(services.store.checkpoints().values()) == {middle} and set(positions.values()) == {middle}
    assert services.engine.catch_up() == len(runners) * (head - middle)
    assert set(services.store.checkpoints().values()) == {head}
    folded = _rows(services)
    services.engine.rebuild()
    assert _rows(services) == folded


def test_the_worker_loop_keeps_the_views_current_under_a_stream_of_writes(services: Services) -> None:
    """``start(busy_interval=...)``, as `cs worker` runs it: passes bounded at the head, the next one
    soon after a pass that folded something. Writes made while it runs all reach the views, which
    are those of a rebuild."""
    app, engine = services.app, services.engine
    engine.start(poll_interval=0.2, busy_interval=0.01)
    try:
        for i in range(30):
            app.register_customer({"external_key": f"s{i:02d}", "name": f"Stream {i}", "arr": i}, META)
            if i % 3 == 0:
                app.update_customer(f"s{i:02d}", {"seats": i + 1}, META)
        engine.wait_for(app.last_position(), timeout=20)
    finally:
        engine.stop()
    folded = _rows(services)
    assert len(folded["cs_customers_v1"]) == 30
    engine.own()
    engine.rebuild()
    assert _rows(services) == folded
