"""Segment membership, derived at read time from the current views.

A segment stores only its rules (``segments_v1``). Who belongs to it is computed when asked,
from each customer's row: the profile view (arr, seats, tier, industry, owner, status, domain,
renewal date), :func:`projections.health.health_as_of` now (score and band, overrides
included) and the latest NPS answer in the survey view. Those views follow the event log and
every read tool first brings them to the head of the log, so membership is always current:
an ``update_client_info`` that changes a customer's ARR, a new NPS answer or a health
override changes membership on the very next read, with nothing stored to go stale.

Cost: one pass over the book per request (profile rows + the health model's bulk queries),
a few milliseconds per hundred customers; fine for the small books this serves. A segment
is evaluated over active customers unless its rules test ``status``.
"""

from __future__ import annotations

from datetime import date, datetime
from statistics import fmean
from typing import Any
from uuid import UUID

from events.errors import InvalidInputError
from events.segments import BANDS, SegmentNotFoundError, fields_used
from projections.base import utc_iso
from projections.cursor import decode_cursor, encode_cursor
from projections.feedback import SURVEYS
from projections.health import health_as_of
from projections.lifecycle_query import stages_at
from projections.profile import CUSTOMERS
from projections.segments import SegmentsView, matches
from projections.store import Tx, ViewStore

ROW_COLUMNS = ("customer_id", "external_key", "name", "arr", "seats", "tier", "industry", "owner", "status", "domain",
               "renewal_date")  # fmt: skip


def _in(ids: list[str] | None) -> tuple[str, list[Any]]:
    if ids is None:
        return "", []
    return f" AND customer_id IN ({', '.join('?' * len(ids))})", list(ids)


def latest_nps(tx: Tx, now: datetime, ids: list[str] | None = None) -> dict[str, int]:
    """Each customer's latest NPS answer (0-10) given before ``now``."""
    where, params = _in(ids)
    latest: dict[str, int] = {}
    for row in tx.fetchall(f"SELECT customer_id, score FROM {SURVEYS} WHERE customer_id IS NOT NULL AND responded_at < ?"
                           f"{where} ORDER BY responded_at, survey_id", [utc_iso(now), *params]):  # fmt: skip
        latest[row["customer_id"]] = int(row["score"])
    return latest


def book_rows(store: ViewStore, now: datetime, customer_ids: list[UUID] | None = None, *, with_health: bool = True,
              with_stage: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """One row per customer with every field of the rule language (docs/segments.md); health
    and band only ``with_health`` (else null / unknown), stage only ``with_stage`` (else null)."""
    ids = [str(c) for c in customer_ids] if customer_ids is not None else None
    if ids == []:
        return []
    where, params = _in(ids)
    with store.snapshot() as tx:
        profiles = tx.fetchall(f"SELECT {', '.join(ROW_COLUMNS)} FROM {CUSTOMERS} WHERE 1 = 1{where} ORDER BY customer_id",
                               params)  # fmt: skip
        nps = latest_nps(tx, now, ids)
    health = health_as_of(store, now, customer_ids) if with_health and profiles else {}
    bands = {cid: h.band for cid, h in health.items()} if with_health else None  # not computed twice
    stages = stages_at(store, now, customer_ids, bands) if with_stage and profiles else {}
    today = now.date()
    rows = []
    for p in profiles:
        cid, h, renewal = p["customer_id"], health.get(p["customer_id"]), p["renewal_date"]
        rows.append({
            "customer_id": cid, "client_id": p["external_key"], "name": p["name"],
            "arr": p["arr"], "seats": p["seats"], "tier": p["tier"], "industry": p["industry"], "owner": p["owner"],
            "status": p["status"], "domain": p["domain"], "renewal_date": renewal,
            "days_to_renewal": (date.fromisoformat(renewal) - today).days if renewal else None,
            "health": h.score if h else None, "band": h.band if h else "unknown", "nps": nps.get(cid),
            "stage": stages[cid].stage if cid in stages else None,
        })  # fmt: skip
    return rows


def population(rules: dict[str, Any]) -> str:
    return "all customers" if "status" in fields_used(rules) else "active customers"


def members(rows: list[dict[str, Any]], rules: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows in the segment: active customers matching the rules (any status if the rules test it)."""
    every = "status" in fields_used(rules)
    return [r for r in rows if (every or r["status"] == "active") and matches(rules, r)]


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, total ARR (over rows with an ARR), mean health (over scored rows; None if none) and band mix."""
    scores = [r["health"] for r in rows if r["health"] is not None]
    bands = dict.fromkeys(BANDS, 0)
    for r in rows:
        bands[r["band"]] += 1
    return {"count": len(rows), "arr": float(sum(r["arr"] for r in rows if r["arr"] is not None)),
            "mean_health": round(fmean(scores), 1) if scores else None, "scored": len(scores), "bands": bands}  # fmt: skip


def page(rows: list[dict[str, Any]], limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Largest ARR first (no ARR last), then by customer id; keyset cursor on (arr, id)."""
    def key(r: dict[str, Any]) -> tuple[float, str]:
        return (-(r["arr"] if r["arr"] is not None else -1.0), r["customer_id"])

    ordered = sorted(rows, key=key)
    after = decode_cursor(cursor, 2)
    if after is not None:
        if not isinstance(after[0], (int, float)) or not isinstance(after[1], str):
            raise InvalidInputError("cursor", "not a cursor from this list; pass the next_cursor of the previous page")
        ordered = [r for r in ordered if key(r) > (-float(after[0]), after[1])]
    chunk = ordered[:limit]
    if len(ordered) <= limit:
        return chunk, None
    last = chunk[-1]
    return chunk, encode_cursor(last["arr"] if last["arr"] is not None else -1.0, last["customer_id"])


def definition(store: ViewStore, name: str, field: str = "name") -> dict[str, Any]:
    found = SegmentsView(store).get(name)
    if found is None:
        raise SegmentNotFoundError(name, field)
    return found


def segments_of(store: ViewStore, customer_id: UUID, now: datetime) -> list[str]:
    """Names of the segments one customer belongs to now."""
    defined = SegmentsView(store).all()
    if not defined:
        return []
    rows = book_rows(store, now, [customer_id], with_stage=any("stage" in fields_used(d["rules"]) for d in defined))
    return [d["name"] for d in defined if rows and members(rows, d["rules"])]


def allowed_customer_ids(store: ViewStore, now: datetime, *, segment: str | None = None, band: str | None = None,
                         min_health: float | None = None, max_health: float | None = None) -> list[str] | None:  # fmt: skip
    """Ids passing the segment / health filters of ``list_clients`` (None: no such filter given).

    Health filters drop customers without a score; a segment keeps its own population rule."""
    if segment is None and band is None and min_health is None and max_health is None:
        return None
    rules = definition(store, segment, "segment")["rules"] if segment is not None else None
    need_health = band is not None or min_health is not None or max_health is not None
    used = fields_used(rules) if rules is not None else set()
    rows = book_rows(store, now, with_health=need_health or bool(used & {"health", "band"}), with_stage="stage" in used)
    if rules is not None:
        rows = members(rows, rules)
    if band is not None:
        rows = [r for r in rows if r["band"] == band]
    if min_health is not None:
        rows = [r for r in rows if r["health"] is not None and r["health"] >= min_health]
    if max_health is not None:
        rows = [r for r in rows if r["health"] is not None and r["health"] <= max_health]
    return [r["customer_id"] for r in rows]
