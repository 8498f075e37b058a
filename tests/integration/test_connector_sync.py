"""Pull syncs (`Ingestion.sync`) of Zendesk, Intercom and Mixpanel, with the real
``VendorClient`` against the local vendor fakes, over several pages, with faults on the way
(a 429 with Retry-After, a burst of 503s, a truncated page), on both backends. Then: a sync
killed mid-way and run again ends where an uninterrupted run on a fresh store ends."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from connectors.http import VendorUnavailableError, reset_breakers
from connectors.service import Ingestion
from events.ingest import BatchReport
from events.settings import Settings
from mcp_server import cli_connectors
from mcp_server.cli_connectors import vendor_client
from mcp_server.server import build_server
from mcp_server.services import Services, open_services
from tests.support.connectors import (
    ACME,
    GLOBEX,
    INITECH,
    PASS,
    SIGNAL_TABLES,
    another_store,
    fast_client,
    queue_faults,
    register_customers,
    rows,
    sync_row,
    sync_settings,
    wait_until,
)
from tests.support.vendors import (
    IntercomFake,
    MixpanelFake,
    RecordedRequest,
    VendorFake,
    ZendeskFake,
    intercom_conversation,
    mixpanel_event,
    zendesk_ticket,
)
from tests.support.vendors import server as vendor_server
from tests.support.vendors.server import encode_cursor

pytestmark = pytest.mark.anyio

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)  # inside the 90-day first-sync window
TODAY = date(2026, 3, 10)  # Mixpanel: the sync is told what "today" is
MIXPANEL_DAYS = 4  # lookback: 2026-03-06 .. 2026-03-10, one export request per day
FAULTS = [
    {"status": 429, "headers": {"Retry-After": "1"}},  # page 1, attempt 1: rate limited for 1 s
    PASS,  # page 1, attempt 2
    {"status": 503},  # page 2: a burst of three 503s, then the page
    {"status": 503},
    {"status": 503},
    PASS,
    {"malformed": True},  # page 3 arrives truncated (200, half a body), then whole
]
REQUESTS_PER_PAGE = [2, 4, 2]  # then one request for each further page


# ---------------------------------------------------------------------------------- data sets
def zendesk_tickets() -> list[dict[str, Any]]:
    """11 tickets, 4 pages of 3: two known orgs, an unknown org, no org at all."""
    orgs = [509974, 600001, 999999, None]
    return [
        zendesk_ticket(
            i,
            orgs[i % 4],
            status="solved" if i % 3 == 0 else "open",
            priority="high" if i % 5 == 0 else "normal",
            created_at=BASE + timedelta(hours=i),
            updated_at=BASE + timedelta(hours=i, minutes=30),
            csat={1: "good", 2: "bad"}.get(i % 4),
        )
        for i in range(1, 12)
    ]


def zendesk_expected(tickets: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    owner = {509974: ACME, 600001: GLOBEX}
    csat = {"good": 1.0, "bad": 0.0}
    return {
        (
            str(t["id"]),
            owner.get(t["organization_id"]),
            t["status"],
            t["priority"],
            t["status"] == "solved",
            csat.get(t["satisfaction_rating"]["score"]),
        )
        for t in tickets
    }


INTERCOM_AUTHORS = {  # i % 5 -> (author e-mail, company_id, customer it belongs to)
    0: ("pat@gmail.example", "ic-acme", ACME),  # by intercom_company_id
    1: ("ann@globex.example", None, GLOBEX),  # by e-mail domain
    2: ("bo@initech.example", None, INITECH),  # by e-mail domain (no source ids at all)
    3: ("who@nowhere.example", "ic-unknown", None),  # nobody: kept, unmatched
    4: ("x@other.example", "ic-globex", GLOBEX),
}


def intercom_conversations() -> list[dict[str, Any]]:
    """110 conversations: three search pages of 50."""
    return [
        intercom_conversation(
            1000 + i,
            INTERCOM_AUTHORS[i % 5][0],
            company_id=INTERCOM_AUTHORS[i % 5][1],
            state="closed" if i % 7 == 0 else "open",
            created_at=BASE + timedelta(minutes=i),
            updated_at=BASE + timedelta(minutes=i, seconds=30),
            rating=(i % 5) + 1 if i % 6 == 0 else None,
        )
        for i in range(1, 111)
    ]


def intercom_expected(conversations: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    out = set()
    for c in conversations:
        i = int(c["id"]) - 1000
        rating = c["conversation_rating"]
        csat = (rating["rating"] - 1) / 4 if rating else None
        out.add((c["id"], INTERCOM_AUTHORS[i % 5][2], c["state"], "normal", c["state"] == "closed", csat))
    return out


MIXPANEL_ACCOUNTS = {"acct-acme": ACME, "acct-globex": GLOBEX}
MIXPANEL_DOMAINS = {"initech.example": INITECH}


def mixpanel_events() -> list[dict[str, Any]]:
    """Five days of events: Acme (sessions, two features, three users), Globex, Initech by
    ``$email`` domain, an unknown account, and one event exported twice (same $insert_id)."""
    events = []
    for d in range(MIXPANEL_DAYS + 1):
        day = datetime(2026, 3, 6, tzinfo=UTC) + timedelta(days=d)
        events.append(mixpanel_event("$session_start", "acct-acme", "user0", day + timedelta(hours=7)))
        for j in range(8):
            name = "Report Viewed" if j % 2 else "Dashboard Opened"
            events.append(mixpanel_event(name, "acct-acme", f"user{j % 3}", day + timedelta(hours=8, minutes=7 * j)))
        events.append(mixpanel_event("Export", "acct-globex", "g1", day + timedelta(hours=9)))
        events.append(mixpanel_event("Export", "acct-ghost", "ghost", day + timedelta(hours=10)))
        events.append(mixpanel_event("Invite", "acct-unlisted", "i1", day + timedelta(hours=11),
                                     properties={"$email": "i1@initech.example"}))  # fmt: skip
    events.append(copy.deepcopy(events[3]))  # exported twice: counted once
    return events


def mixpanel_expected(events: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """(customer_id, account, day, events, sessions, active_users) per customer-day."""
    groups: dict[tuple[str | None, str, str], dict[str, dict[str, Any]]] = {}
    for e in events:
        p = e["properties"]
        domain = str(p.get("$email", "")).rpartition("@")[2]
        customer = MIXPANEL_ACCOUNTS.get(p["account_id"]) or MIXPANEL_DOMAINS.get(domain)
        day = datetime.fromtimestamp(p["time"], UTC).date().isoformat()
        groups.setdefault((customer, "" if customer else p["account_id"], day), {})[p["$insert_id"]] = e
    return {
        (
            customer,
            account,
            day,
            len(seen),
            sum(1 for e in seen.values() if e["event"] == "$session_start"),
            len({e["properties"]["distinct_id"] for e in seen.values()}),
        )
        for (customer, account, day), seen in groups.items()
    }


# ------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    vendor: str
    make_fake: Callable[[], VendorFake]
    expected: Callable[[VendorFake], set[tuple[Any, ...]]]
    records: Callable[[VendorFake], int]  # distinct records in the data set
    unmatched: int  # records of nobody, as counted at ingestion
    unmatched_held: int  # rows of nobody in the views
    pages: int
    page_of: Callable[[RecordedRequest], Any]  # what identifies the page a request asks for
    final_cursor: Callable[[VendorFake], str]
    sync_kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.vendor


def _ticket_rows(svc: Services, vendor: str) -> set[tuple[Any, ...]]:
    with svc.store.snapshot() as tx:
        found = tx.fetchall("SELECT vendor_id, customer_id, status, priority, solved_at, csat FROM cs_tickets_v1 "
                            "WHERE vendor = ?", (vendor,))  # fmt: skip
    return {(r["vendor_id"], r["customer_id"], r["status"], r["priority"], r["solved_at"] is not None,
             None if r["csat"] is None else float(r["csat"])) for r in found}  # fmt: skip


def _usage_rows(svc: Services) -> set[tuple[Any, ...]]:
    with svc.store.snapshot() as tx:
        found = tx.fetchall("SELECT customer_id, account, day, events, sessions, active_users FROM cs_usage_days_v6")
    return {(r["customer_id"], r["account"], r["day"], int(r["events"]), int(r["sessions"]), int(r["active_users"]))
            for r in found}  # fmt: skip


def view_rows(svc: Services, vendor: str) -> set[tuple[Any, ...]]:
    return _usage_rows(svc) if vendor == "mixpanel" else _ticket_rows(svc, vendor)


def _zendesk_final_cursor(fake: VendorFake) -> str:
    """The last page's after_cursor: the (opaque to the client) position of the newest ticket."""
    newest = max((int(t["generated_timestamp"]), int(t["id"])) for t in fake.tickets)  # type: ignore[attr-defined]
    return encode_cursor({"after": list(newest)})


def _intercom_final_cursor(fake: VendorFake) -> str:
    newest = max(int(c["updated_at"]) for c in fake.conversations)  # type: ignore[attr-defined]
    return str(newest - 1)  # equal timestamps are read again next time (and deduplicated)


CASES = [
    Case("zendesk", lambda: ZendeskFake(tickets=zendesk_tickets(), page_size=3),
         lambda f: zendesk_expected(f.tickets), lambda f: len(f.tickets),  # type: ignore[attr-defined]
         unmatched=6, unmatched_held=6, pages=4, page_of=lambda r: r.query.get("cursor") or r.query["start_time"],
         final_cursor=_zendesk_final_cursor),
    Case("intercom", lambda: IntercomFake(conversations=intercom_conversations()),
         lambda f: intercom_expected(f.conversations), lambda f: len(f.conversations),  # type: ignore[attr-defined]
         unmatched=22, unmatched_held=22, pages=3, page_of=lambda r: r.json()["pagination"].get("starting_after"),
         final_cursor=_intercom_final_cursor),
    Case("mixpanel", lambda: MixpanelFake(events=mixpanel_events()),
         lambda f: mixpanel_expected(f.events),  # type: ignore[attr-defined]
         lambda f: len({e["properties"]["$insert_id"] for e in f.events}),  # type: ignore[attr-defined]
         unmatched=MIXPANEL_DAYS + 1, unmatched_held=MIXPANEL_DAYS + 1, pages=MIXPANEL_DAYS + 1,
         page_of=lambda r: r.query["from_date"], final_cursor=lambda f: (TODAY - timedelta(days=1)).isoformat(),
         sync_kwargs={"today": TODAY, "lookback_days": MIXPANEL_DAYS, "window_days": 1}),  # a page a day
]  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    reset_breakers()
    yield
    reset_breakers()


async def run_sync(ingestion: Ingestion, case: Case, settings: Settings) -> BatchReport:
    async with fast_client(case.vendor, settings) as client:
        return await ingestion.sync(case.vendor, client, **case.sync_kwargs)


def page_runs(fake: VendorFake, case: Case, start: int = 0) -> list[int]:
    """How many requests asked for each page in turn (retries of one page are consecutive)."""
    runs: list[list[Any]] = []
    for r in fake.requests_to()[start:]:
        page = case.page_of(r)
        if runs and runs[-1][0] == page:
            runs[-1][1] += 1
        else:
            runs.append([page, 1])
    return [n for _, n in runs]


async def sync_status(settings: Settings, vendor: str) -> dict[str, Any]:
    async with Client(build_server(settings, background=False)) as client:
        result = await client.call_tool("get_sync_status", {})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    (status,) = [c for c in result.structured_content["connectors"] if c["vendor"] == vendor]
    return status


# -------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_sync_over_faults_records_every_record_once(settings: Settings, case: Case) -> None:
    with case.make_fake() as fake:
        vs = sync_settings(settings, fake)
        queue_faults(fake, FAULTS)
        with open_services(vs) as svc:
            register_customers(svc)
            ingestion = svc.ingestion("test")
            started = time.monotonic()
            report = await run_sync(ingestion, case, vs)
            assert time.monotonic() - started >= 1.0, "the 429's Retry-After: 1 was not honoured"
            assert page_runs(fake, case) == REQUESTS_PER_PAGE + [1] * (case.pages - 3)
            assert report.recorded == case.records(fake) and report.rejected == []
            assert report.unmatched == case.unmatched

            svc.engine.ensure_current()
            expected = case.expected(fake)
            assert view_rows(svc, case.vendor) == expected
            if case.vendor == "mixpanel":  # the $insert_id exported twice is counted once
                assert sum(r[3] for r in expected) == case.records(fake) == len(fake.events) - 1  # type: ignore[attr-defined]
            cursor = sync_row(svc, case.vendor)["cursor"]
            assert cursor == case.final_cursor(fake)
            before = {t: rows(svc, t) for t in SIGNAL_TABLES}

            # Right after, with the client `cs sync` builds: nothing new, nothing counted twice.
            async with vendor_client(case.vendor, vs) as client:
                again = await ingestion.sync(case.vendor, client, **case.sync_kwargs)
            assert again.recorded == 0 and again.unmatched == 0 and again.rejected == []
            svc.engine.ensure_current()
            assert {t: rows(svc, t) for t in SIGNAL_TABLES} == before
            assert sync_row(svc, case.vendor)["cursor"] == cursor

    status = await sync_status(vs, case.vendor)
    assert status["cursor"] == cursor and status["sync_configured"] is True
    assert status["recorded"] == case.records(fake)
    assert status["unmatched"] == case.unmatched and status["unmatched_records_held"] == case.unmatched_held
    assert status["rejected"] == 0 and status["failures"] == 0 and status["last_error"] is None
    assert status["circuit_breaker"] == "closed" and status["last_sync_at"] is not None


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_sync_killed_midway_then_rerun_ends_like_an_uninterrupted_one(
    settings: Settings, case: Case, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hung request is cancelled when the fake stops: give it 0.1 s of grace, not the default 1 s.
    monkeypatch.setattr(vendor_server, "GRACEFUL_SHUTDOWN", 0.1)
    with case.make_fake() as fake:
        with another_store(settings, request, tmp_path) as fresh:  # the reference: one uninterrupted run
            ref_settings = sync_settings(fresh, fake)
            with open_services(ref_settings) as ref:
                register_customers(ref)
                await run_sync(ref.ingestion("test"), case, ref_settings)
                ref.engine.ensure_current()
                expected = final_state(ref, case.vendor)

        vs = sync_settings(settings, fake)
        with open_services(vs) as svc:
            register_customers(svc)
            ingestion = svc.ingestion("test")
            start = len(fake.requests_to())
            queue_faults(fake, [PASS, PASS, {"delay": 30.0}])  # the third page hangs until we kill the sync
            finished = False

            async def sync() -> None:
                nonlocal finished
                await ingestion.sync(case.vendor, client, **case.sync_kwargs)
                finished = True

            client = fast_client(case.vendor, vs)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sync)
                    await wait_until(lambda: len(fake.requests_to()) - start >= 3, "the third page to be requested")
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await client.aclose()
            assert not finished

            svc.engine.ensure_current()
            killed = final_state(svc, case.vendor)
            assert killed != expected
            assert 0 < len(view_rows(svc, case.vendor)) < len(case.expected(fake))  # two pages went in
            hung = fake.requests_to()[start + 2]
            cursor = sync_row(svc, case.vendor)["cursor"]
            if case.vendor == "zendesk":  # each page commits with its after_cursor
                assert cursor == hung.query["cursor"]
            elif case.vendor == "mixpanel":  # each complete day moves the cursor
                assert cursor == (date.fromisoformat(hung.query["from_date"]) - timedelta(days=1)).isoformat()
            else:  # the search cursor moves only once the whole search is read
                assert cursor is None

            report = await run_sync(ingestion, case, vs)
            assert report.rejected == []
            svc.engine.ensure_current()
            assert final_state(svc, case.vendor) == expected


def final_state(svc: Services, vendor: str) -> dict[str, Any]:
    """Every signal view and the timeline (without log positions and recording times), and the
    connector's cursor and totals of what was recorded."""
    state: dict[str, Any] = {t: rows(svc, t) for t in SIGNAL_TABLES}
    state["cs_timeline_v1"] = rows(svc, "cs_timeline_v1", exclude=("position", "recorded_at"))
    state["cs_timeline_subjects_v1"] = rows(svc, "cs_timeline_subjects_v1")
    sync = sync_row(svc, vendor)
    state["sync"] = {k: sync[k] for k in ("vendor", "connector_id", "cursor", "recorded", "unmatched", "rejected")}
    return state


async def test_a_failed_sync_is_recorded_and_the_next_one_resumes(settings: Settings) -> None:
    """`cs sync` (cli_connectors.run_sync, with the client it builds): page 2 answers 503 to every
    attempt (Retry-After: 0, so no back-off wait). Page 1 and its cursor stay recorded, the failure
    is an event that get_sync_status shows, and the next sync goes on from page 2."""
    case = CASES[0]
    unavailable = {"status": 503, "headers": {"Retry-After": "0"}}
    with ZendeskFake(tickets=zendesk_tickets(), page_size=3) as fake:
        vs = sync_settings(settings, fake)
        queue_faults(fake, [PASS, *[unavailable] * 6])  # 6 = VendorClient's default max_attempts
        with open_services(vs) as svc:
            register_customers(svc)
            with pytest.raises(VendorUnavailableError, match="retries exhausted after 6 attempt"):
                await cli_connectors.run_sync(svc.ingestion("cli"), "zendesk", vs, 90)
            svc.engine.ensure_current()
            failed = sync_row(svc, "zendesk")
            assert failed["cursor"] == fake.requests_to()[1].query["cursor"]  # page 1's after_cursor
            assert len(view_rows(svc, "zendesk")) == 3
        status = await sync_status(vs, "zendesk")
        assert status["failures"] == 1 and status["last_error"] is not None
        assert "HTTP 503" in status["last_error"] and fake.api_token not in status["last_error"]
        assert status["circuit_breaker"] == "closed" and status["cursor"] == failed["cursor"]

        with open_services(vs) as svc:
            report = await cli_connectors.run_sync(svc.ingestion("cli"), "zendesk", vs, 90)
            assert report.recorded == len(fake.tickets) - 3
            svc.engine.ensure_current()
            assert view_rows(svc, "zendesk") == case.expected(fake)
            assert sync_row(svc, "zendesk")["cursor"] == case.final_cursor(fake)
            assert sync_row(svc, "zendesk")["failures"] == 1  # history: the failure stays on record
