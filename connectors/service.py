"""Ingestion: files, pull syncs and webhook deliveries through the vendors' translators into
:class:`events.ingest.SignalBatch` commits. Shared by `cs import`, `cs sync` and the HTTP
webhook receiver, so every path records the same events for the same facts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from itertools import islice
from typing import IO, Any

import orjson
import structlog
from eventsourcing.persistence import IntegrityError

from connectors import intercom, mixpanel, nps, sendgrid, workers, zendesk
from connectors.matching import CustomerDirectory
from events.application import CustomerSuccess
from events.commands import CommandMeta
from events.errors import InvalidInputError
from events.ingest import BatchReport, Match, SignalBatch, TicketSnapshot, UsageCarry
from events.settings import Settings
from events.signals import Connector, signal_id

log = structlog.get_logger(__name__)

FILE_SOURCES = ("zendesk", "intercom", "mixpanel", "sendgrid", "nps")
SYNC_SOURCES = ("zendesk", "intercom", "mixpanel")
CHUNK = 500
USAGE_CHUNK = 50_000
COMMIT_ATTEMPTS = 3
MALFORMED_ATTEMPTS = 3


@dataclass
class WebhookOutcome:
    status: int  # 200 recorded or duplicate, 400 malformed, 401 bad signature
    message: str
    report: BatchReport | None = None


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class Ingestion:
    def __init__(self, app: CustomerSuccess, directory: CustomerDirectory, settings: Settings, *, actor: str,
                 usage_chunk: int = USAGE_CHUNK) -> None:  # fmt: skip
        self.app = app
        self.directory = directory
        self.settings = settings
        self.actor = actor
        self.account_property = settings.vendor.get("CS_MIXPANEL_ACCOUNT_PROPERTY") or "account_id"
        self.usage_chunk = usage_chunk  # raw event lines per atomic append

    # ------------------------------------------------------------------ commit
    def _commit(self, vendor: str, channel: str, source_id: str, fill: Callable[[SignalBatch], None],
                cursor: str | None = None, record_batch: bool = True) -> BatchReport:  # fmt: skip
        """Build and commit one batch; on a concurrent write to the same aggregates, rebuild
        it from the new state and try again (the retry then sees duplicates, not conflicts)."""
        meta = CommandMeta(actor=self.actor, source=f"{vendor}.{channel}", source_id=source_id)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            batch = SignalBatch(self.app, vendor, channel, meta)
            fill(batch)
            try:
                return batch.commit(cursor, record_batch=record_batch)
            except IntegrityError:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                log.info("ingest.retry_conflict", vendor=vendor, channel=channel, attempt=attempt)
        raise AssertionError("unreachable")

    def cursor(self, vendor: str) -> str | None:
        cid = signal_id("connector", vendor)
        if not self.app.exists(cid):
            return None
        connector: Connector = self.app.repository.get(cid)
        return connector.cursor

    def record_failure(self, vendor: str, channel: str, error: str) -> None:
        """A failed sync is an event too: get_sync_status shows it, the cursor stays put."""
        meta = CommandMeta(actor=self.actor, source=f"{vendor}.{channel}", source_id="failure")
        cid = signal_id("connector", vendor)
        now = datetime.now(timezone.utc)
        kw = {"actor": meta.actor, "source": meta.source, "source_id": meta.source_id, "occurred_at": now}
        connector: Connector = self.app.repository.get(cid) if self.app.exists(cid) else Connector(vendor=vendor, **kw)
        connector.failed(channel=channel, error=error[:500], **kw)
        self.app.save(connector)

    # ------------------------------------------------------------------- files
    def import_file(self, source: str, stream: IO[str], name: str, on_progress: Callable[[int], None] | None = None) -> BatchReport:
        if source not in FILE_SOURCES:
            raise InvalidInputError("SOURCE", f"unknown {source!r}; available: customers, {', '.join(FILE_SOURCES)}")
        total = BatchReport()
        if source == "mixpanel":
            # The cyclic collector off for the whole import, not chunk by chunk: each time it came
            # back on, it walked every object the import then held (the parsed chunk, the carried
            # days), 28 young and 3 middle collections, 0.4-0.8 s of a 1M-event import, for
            # nothing (gc.collect() after such an import finds 20 unreachable objects).
            with workers.collector_paused():
                for report in self._mixpanel_lines(stream, "import", name):
                    total.merge(report)
                    if on_progress:
                        on_progress(report.received)
            return total
        if source == "nps":
            rows: Iterable[tuple[str, Any]] = ((f"line {n}", row) for n, row in nps.read_rows(stream))
        else:
            try:
                data = json.load(stream)
            except ValueError as exc:
                raise InvalidInputError("FILE", f"{name} is not JSON: {exc}") from None
            rows = self._file_records(source, data)
        for chunk in _chunks(rows, CHUNK):
            report = self._commit(source, "import", name, lambda b, c=chunk: self._fill(source, b, c))
            total.merge(report)
            if on_progress:
                on_progress(report.received)
        return total

    def _file_records(self, source: str, data: Any) -> Iterator[tuple[str, Any]]:
        if source == "zendesk":
            for p, page in enumerate(zendesk.file_pages(data), start=1):
                users = {u["id"]: u.get("email") for u in page.get("users") or [] if isinstance(u, dict) and "id" in u}
                tickets = page.get("tickets")
                if not isinstance(tickets, list):
                    raise InvalidInputError(f"page {p}.tickets", "missing; expected an incremental export page")
                for i, ticket in enumerate(tickets):
                    yield f"page {p} ticket {i + 1}", (ticket, users)
        elif source == "intercom":
            for i, conversation in enumerate(intercom.file_conversations(data)):
                yield f"conversation {i + 1}", conversation
        else:
            for i, event in enumerate(sendgrid.file_events(data)):
                yield f"event {i + 1}", event

    def _fill(self, source: str, batch: SignalBatch, records: list[tuple[str, Any]]) -> None:
        for where, record in records:
            try:
                if source == "zendesk":
                    snap = zendesk.translate(*record)
                    batch.ticket(snap, zendesk.match_ticket(self.directory, snap))
                elif source == "intercom":
                    snap = intercom.translate(record)
                    batch.ticket(snap, intercom.match_conversation(self.directory, snap))
                elif source == "sendgrid":
                    activity = sendgrid.translate(record)
                    batch.email(activity, sendgrid.match_recipient(self.directory, activity))
                else:
                    answer = nps.translate(record)
                    batch.survey(answer, nps.match_answer(self.directory, answer))
            except InvalidInputError as exc:
                batch.reject(where, exc.field, str(exc).split(": ", 1)[-1])
            except (TypeError, AttributeError, KeyError) as exc:  # a field of an unexpected JSON type
                batch.reject(where, "record", f"unexpected shape ({type(exc).__name__}); see the vendor's documented format")

    def _mixpanel_lines(self, lines: Iterable[str | bytes], channel: str, name: str,
                        final_cursor: str | None = None) -> Iterator[BatchReport]:  # fmt: skip
        """Commit raw events chunk by chunk of ``self.usage_chunk`` lines (numbered from 1);
        only the last chunk carries the new cursor, so a sync killed between chunks re-reads
        the day (duplicates count once). From two chunks on, a worker process parses the next
        chunk while this one is rolled up and committed (connectors/workers.py). Callers hold the
        cyclic collector off around the whole run (``workers.collector_paused``, see import_file)."""
        matches: dict[str | None, Match] = {}
        carry = UsageCarry()  # user digests and the days just committed, from chunk to chunk
        for parsed, last in workers.parsed_chunks(lines, self.usage_chunk, self.account_property):
            for account, email in parsed.emails.items():
                if account not in matches:
                    matches[account] = mixpanel.match_account(self.directory, account, email)

            def fill(batch: SignalBatch, parsed: mixpanel.ParsedChunk = parsed) -> None:
                batch.usage(parsed.groups, matches, carry)
                for where, field_name, reason in parsed.rejected:
                    batch.reject(where, field_name, reason)

            yield self._commit("mixpanel", channel, name, fill, final_cursor if last else None)

    # ------------------------------------------------------------------- syncs
    async def sync(self, vendor: str, client: Any, *, today: date | None = None, lookback_days: int = 90,
                   window_days: int = 7) -> BatchReport:  # fmt: skip
        """Pull from ``cursor`` to now, one atomic commit (events + new cursor) per page."""
        total = BatchReport()
        now = datetime.now(timezone.utc)
        if vendor == "zendesk":
            start = int((now - timedelta(days=lookback_days)).timestamp())
            async for page in zendesk.fetch_pages(client, self.cursor(vendor), start):
                snaps, after, _ = zendesk.translate_page(page)

                def fill(batch: SignalBatch, snaps: list[Any] = snaps) -> None:
                    for i, snap in enumerate(snaps):
                        if isinstance(snap, InvalidInputError):
                            batch.reject(f"ticket {i + 1}", snap.field, str(snap).split(": ", 1)[-1])
                        else:
                            batch.ticket(snap, zendesk.match_ticket(self.directory, snap))

                total.merge(self._commit(vendor, "sync", "incremental-export", fill, after))
        elif vendor == "intercom":
            since = int(self.cursor(vendor) or int((now - timedelta(days=lookback_days)).timestamp()))
            newest = since
            async for page in intercom.fetch_pages(client, since):
                conversations = page["conversations"]
                newest = max([newest, *(int(c.get("updated_at") or 0) for c in conversations if isinstance(c, dict))])
                records = [(f"conversation {i + 1}", c) for i, c in enumerate(conversations)]
                total.merge(self._commit(vendor, "sync", "conversations-search", lambda b, r=records: self._fill(vendor, b, r)))
            # The search is complete: move the cursor (one second back: equal timestamps re-read, deduped).
            total.merge(self._commit(vendor, "sync", "conversations-search", lambda b: None, str(max(since, newest - 1))))
        elif vendor == "mixpanel":
            project = self.settings.vendor.get("CS_MIXPANEL_PROJECT_ID")
            if not project:
                raise InvalidInputError("CS_MIXPANEL_PROJECT_ID", "required for `cs sync mixpanel`")
            today = today or now.date()
            yesterday = (today - timedelta(days=1)).isoformat()
            last = self.cursor(vendor)
            # Start at the last complete day itself: events that reached Mixpanel late for it are
            # read once more (duplicates count once). One request per window of days keeps a
            # first sync far inside the export's 60 queries/hour.
            day = date.fromisoformat(last) if last else today - timedelta(days=lookback_days)
            while day <= today:
                end = min(day + timedelta(days=window_days - 1), today)
                lines = await self._export_range(client, project, day, end)
                complete = min(end.isoformat(), yesterday)
                complete = complete if complete >= (last or "") else last  # today is re-read next time
                with workers.collector_paused():  # as for import_file
                    for report in self._mixpanel_lines([line for _, line in lines], "sync", f"export {day}..{end}", complete):
                        total.merge(report)
                if not lines and complete and complete != last:
                    total.merge(self._commit(vendor, "sync", f"export {day}..{end}", lambda b: None, complete))
                last = complete
                day = end + timedelta(days=1)
        else:
            raise InvalidInputError("SOURCE", f"no pull sync for {vendor!r}; available: {', '.join(SYNC_SOURCES)}")
        return total

    async def _export_range(self, client: Any, project: str, first: date, last: date) -> list[tuple[int, bytes]]:
        """Days of the raw export, read whole before anything is recorded. A line that is not
        JSON means a truncated transfer: the range is fetched again (bounded)."""
        for attempt in range(1, MALFORMED_ATTEMPTS + 1):
            lines = [(n, line) async for n, line in _numbered(mixpanel.fetch_lines(client, project, first, last))]
            truncated = False
            for _, line in lines:
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    truncated = True
                    break
            if not truncated or attempt == MALFORMED_ATTEMPTS:
                return lines  # on the last attempt the bad lines are reported as rejected
            log.warning("mixpanel.export_malformed", first=first.isoformat(), last=last.isoformat(), attempt=attempt)
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- webhooks
    def webhook(self, vendor: str, headers: dict[str, str], body: bytes) -> WebhookOutcome:
        """Verify, parse, translate and record one delivery (duplicates are 200, recorded once)."""
        prepared = self.prepare_webhook(vendor, headers, body)
        if isinstance(prepared, WebhookOutcome):
            return prepared
        (outcome,) = self.commit_webhooks([prepared])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def prepare_webhook(self, vendor: str, headers: dict[str, str], body: bytes) -> WebhookOutcome | PreparedWebhook:
        """Everything before the commit, with no database access: the signature (401 when bad
        or stale), the JSON (400), the translation (400). An outcome here is final."""
        secrets = self.settings.vendor
        lowered = {k.lower(): v for k, v in headers.items()}
        if vendor == "zendesk":
            ok = zendesk.verify_webhook(secrets.get("CS_ZENDESK_WEBHOOK_SECRET", ""), lowered, body)
        elif vendor == "intercom":
            ok = intercom.verify_webhook(secrets.get("CS_INTERCOM_CLIENT_SECRET", ""), lowered, body)
        elif vendor == "sendgrid":
            ok = sendgrid.verify_webhook(secrets.get("CS_SENDGRID_WEBHOOK_PUBLIC_KEY", ""), lowered, body)
        else:
            return WebhookOutcome(404, f"no webhook receiver for {vendor!r}")
        if not ok:
            return WebhookOutcome(401, "signature missing, invalid or stale")
        try:
            payload = orjson.loads(body)  # strict RFC 8259 in UTF-8, 3-4x faster than json here
        except orjson.JSONDecodeError:
            return WebhookOutcome(400, "body is not JSON")
        try:
            fill = self._webhook_fill(vendor, payload)
        except InvalidInputError as exc:
            return WebhookOutcome(400, str(exc))
        except (TypeError, AttributeError, KeyError) as exc:
            return WebhookOutcome(400, f"unexpected payload shape ({type(exc).__name__})")
        if fill is None:
            return WebhookOutcome(200, "ignored: no ticket or e-mail event in this delivery")
        return PreparedWebhook(vendor, lowered.get("x-zendesk-webhook-id", "delivery"), *fill)

    def commit_webhooks(self, group: list[PreparedWebhook]) -> list[WebhookOutcome | Exception]:
        """Record prepared deliveries of one vendor together: one batch, one transaction (one
        fsync) for the group, each delivery answered with its own outcome. A delivery repeated
        inside the group is a duplicate of the first, as it would be one after the other. On a
        concurrent write the group is rebuilt and retried (as :meth:`_commit` does); on any other
        error the deliveries are committed one by one, so an error is answered only to the
        delivery that caused it."""
        vendor = group[0].vendor
        if len(group) > 1:
            reports: list[BatchReport] = []

            def fill_all(batch: SignalBatch) -> None:
                reports.clear()
                batch.preload_tickets(p.ticket for p in group)
                for prepared in group:
                    before = replace(batch.report, rejected=list(batch.report.rejected))
                    prepared.fill(batch)
                    reports.append(_report_since(before, batch.report))

            try:
                total = self._commit(vendor, "webhook", f"{len(group)} deliveries", fill_all, record_batch=False)
            except Exception as exc:  # noqa: BLE001 - retried one by one below, each with its own answer
                log.warning("webhook.group_failed", vendor=vendor, deliveries=len(group), error=type(exc).__name__)
            else:
                for report in reports:
                    report.position = total.position if report.recorded else None
                return [_webhook_outcome(report) for report in reports]
        outcomes: list[WebhookOutcome | Exception] = []
        for prepared in group:
            try:
                report = self._commit(vendor, "webhook", prepared.source_id, prepared.fill, record_batch=False)
            except Exception as exc:  # noqa: BLE001 - answered to this delivery alone
                outcomes.append(exc)
            else:
                outcomes.append(_webhook_outcome(report))
        return outcomes

    def _webhook_fill(self, vendor: str, payload: Any) -> tuple[Callable[[SignalBatch], None], TicketSnapshot | None] | None:
        if vendor == "sendgrid":
            # A bad event is rejected alone: failing the delivery would make SendGrid retry it and
            # finally drop the good events of the same batch.
            records = [(f"event {i + 1}", e) for i, e in enumerate(sendgrid.file_events(payload))]
            return (lambda batch: self._fill(vendor, batch, records)), None
        translate = zendesk.translate_webhook if vendor == "zendesk" else intercom.translate_webhook
        matcher = zendesk.match_ticket if vendor == "zendesk" else intercom.match_conversation
        snap = translate(payload)
        if snap is None:
            return None

        def fill_ticket(batch: SignalBatch) -> None:
            batch.ticket(snap, matcher(self.directory, snap))

        return fill_ticket, snap


@dataclass(frozen=True)
class PreparedWebhook:
    """A verified, parsed and translated delivery, ready to be recorded."""

    vendor: str
    source_id: str
    fill: Callable[[SignalBatch], None]
    ticket: TicketSnapshot | None  # the ticket it records, for a ticket delivery


def _report_since(before: BatchReport, after: BatchReport) -> BatchReport:
    """What one delivery's fill added to a batch's report."""
    return BatchReport(
        received=after.received - before.received, recorded=after.recorded - before.recorded,
        unchanged=after.unchanged - before.unchanged, duplicates=after.duplicates - before.duplicates,
        unmatched=after.unmatched - before.unmatched, rejected=after.rejected[len(before.rejected):],
    )  # fmt: skip


def _webhook_outcome(report: BatchReport) -> WebhookOutcome:
    if report.rejected and not report.received - len(report.rejected):
        return WebhookOutcome(400, "; ".join(f"{r['field']}: {r['reason']}" for r in report.rejected), report)
    status = "duplicate" if report.recorded == 0 else "recorded"
    if report.rejected:
        status += f"; rejected {len(report.rejected)}: " + "; ".join(
            f"{r['where']} {r['field']}: {r['reason']}" for r in report.rejected[:5])  # fmt: skip
    return WebhookOutcome(200, status, report)


async def _numbered(lines: Any) -> Any:
    number = 0
    async for line in lines:
        number += 1
        yield number, line
