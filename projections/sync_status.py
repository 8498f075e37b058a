"""Per connector: cursor, last batch, totals of what was received, recorded, deduplicated,
left unmatched and rejected (syncs and file imports), and the last failure."""

from __future__ import annotations

from typing import Any

from events.signals import Connector
from projections.base import Projection, utc_iso
from projections.store import Tx, ViewStore
from projections.usage import DAYS as USAGE_DAYS

SYNC = "cs_sync_status_v1"


class SyncStatusProjection(Projection):
    name = "sync_status_v1"
    handles = (Connector.Event,)
    tables = (SYNC,)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {SYNC} (vendor TEXT PRIMARY KEY, connector_id TEXT NOT NULL UNIQUE, cursor TEXT, last_batch_at TEXT,
                last_channel TEXT, batches BIGINT NOT NULL, received BIGINT NOT NULL, recorded BIGINT NOT NULL,
                duplicates BIGINT NOT NULL, unmatched BIGINT NOT NULL, rejected BIGINT NOT NULL,
                last_sync_at TEXT, failures BIGINT NOT NULL, last_error TEXT, last_error_at TEXT)"""
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if not isinstance(event, Connector.Event):
            return  # before any work: most of the log is usage and other signals
        at = utc_iso(event.occurred_at)
        if isinstance(event, Connector.Started):
            tx.execute(f"INSERT INTO {SYNC} (vendor, connector_id, batches, received, recorded, duplicates, unmatched,"
                       " rejected, failures) VALUES (?, ?, 0, 0, 0, 0, 0, 0, 0)",
                       (event.vendor, str(event.originator_id)))  # fmt: skip
        elif isinstance(event, Connector.BatchIngested):
            tx.execute(
                f"UPDATE {SYNC} SET cursor = COALESCE(?, cursor), last_batch_at = ?, last_channel = ?,"
                " batches = batches + 1, received = received + ?, recorded = recorded + ?,"
                " duplicates = duplicates + ?, unmatched = unmatched + ?, rejected = rejected + ?,"
                " last_sync_at = CASE WHEN ? = 'sync' THEN ? ELSE last_sync_at END WHERE connector_id = ?",
                (event.cursor, at, event.channel, event.received, event.recorded, event.duplicates, event.unmatched,
                 event.rejected, event.channel, at, str(event.originator_id)),
            )  # fmt: skip
        elif isinstance(event, Connector.SyncFailed):
            tx.execute(f"UPDATE {SYNC} SET failures = failures + 1, last_error = ?, last_error_at = ?"
                       " WHERE connector_id = ?", (event.error, at, str(event.originator_id)))  # fmt: skip


class SyncStatusView:
    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def all(self) -> list[dict[str, Any]]:
        with self.store.snapshot() as tx:
            rows = {r["vendor"]: dict(r) for r in tx.fetchall(f"SELECT * FROM {SYNC} ORDER BY vendor")}
            unmatched = tx.fetchall(
                "SELECT vendor, COUNT(*) AS n FROM cs_tickets_v1 WHERE customer_id IS NULL GROUP BY vendor "
                "UNION ALL SELECT 'nps' AS vendor, COUNT(*) AS n FROM cs_survey_responses_v1 WHERE customer_id IS NULL "
                "UNION ALL SELECT 'sendgrid' AS vendor, COUNT(*) AS n FROM cs_email_events_v1 WHERE customer_id IS NULL "
                f"UNION ALL SELECT 'mixpanel' AS vendor, COUNT(*) AS n FROM {USAGE_DAYS} WHERE customer_id IS NULL"
            )
        for row in unmatched:
            rows.setdefault(row["vendor"], {"vendor": row["vendor"]})["unmatched_records_held"] = int(row["n"])
        return list(rows.values())
