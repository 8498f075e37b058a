"""Built-in value tiers: active customers grouped by ARR, with the service level each tier gets.

The bounds are three ARR thresholds (default 10,000 / 50,000 / 150,000) cutting the book into
four tiers; a customer whose ARR equals a bound belongs to the tier above it. The service
levels are this deployment's coverage policy (docs/segments.md), stated here once — they are
not derived from data. Customers without a recorded ARR are counted apart, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from events.errors import InvalidInputError
from projections.segment_members import totals

TIERS = ("starter", "growth", "enterprise", "strategic")
DEFAULT_BOUNDS = (10_000.0, 50_000.0, 150_000.0)
SERVICE_LEVELS = {
    "starter": "tech-touch: automated onboarding and lifecycle e-mails, pooled support queue, no assigned CSM",
    "growth": "pooled CSM: a shared CSM team, health-triggered outreach, a check-in every quarter",
    "enterprise": "named CSM: a dedicated CSM, an onboarding plan, quarterly business reviews",
    "strategic": "executive sponsor: a named CSM plus an executive sponsor, monthly reviews, a joint success plan",
}
POLICY_NOTE = "service levels are this deployment's coverage policy (a constant table, docs/segments.md), not data"


def check_bounds(bounds: Sequence[float] | None) -> tuple[float, ...]:
    if bounds is None:
        return DEFAULT_BOUNDS
    values = tuple(bounds)
    if len(values) != len(TIERS) - 1:
        raise InvalidInputError("bounds", f"give exactly {len(TIERS) - 1} ARR thresholds in increasing order "
                                f"(they separate {', '.join(TIERS)}), e.g. {list(map(int, DEFAULT_BOUNDS))}")  # fmt: skip
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InvalidInputError(f"bounds[{i}]", f"a positive number of ARR; got {value!r}")
        if i and value <= values[i - 1]:
            raise InvalidInputError(f"bounds[{i}]", f"{value:g} is not above {values[i - 1]:g}; bounds must increase")
    return tuple(float(v) for v in values)


def tier_of(arr: float, bounds: Sequence[float]) -> str:
    return TIERS[sum(1 for b in bounds if arr >= b)]


def value_tiers(rows: list[dict[str, Any]], bounds: Sequence[float] | None = None) -> dict[str, Any]:
    """Per tier over the active rows: ARR range, service level, count, total ARR, band mix, mean health."""
    cuts = check_bounds(bounds)
    active = [r for r in rows if r["status"] == "active"]
    grouped: dict[str, list[dict[str, Any]]] = {t: [] for t in TIERS}
    no_arr = []
    for row in active:
        if row["arr"] is None:
            no_arr.append(row)
        else:
            grouped[tier_of(row["arr"], cuts)].append(row)
    edges = (0.0, *cuts, None)
    tiers = []
    for i, name in enumerate(TIERS):
        t = totals(grouped[name])
        tiers.append({"tier": name, "min_arr": edges[i], "max_arr": edges[i + 1], "service_level": SERVICE_LEVELS[name],
                      "count": t["count"], "arr": t["arr"], "health_mix": t["bands"], "mean_health": t["mean_health"],
                      "scored": t["scored"]})  # fmt: skip
    return {"bounds": list(cuts), "tiers": tiers, "active_customers": len(active), "active_arr": totals(active)["arr"],
            "without_arr": {"count": len(no_arr), "client_ids": sorted(r["client_id"] for r in no_arr)[:50]},
            "policy_note": POLICY_NOTE}  # fmt: skip
