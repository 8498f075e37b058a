"""The health model (DESIGN §6): six components, each 0-100 from named inputs, a weighted mean
over the components that have data (a missing component's weight is redistributed, never a
silent 50), bands, confidence, top drivers, overrides, and a comparison between two instants.

``score_customer`` is a pure function of :class:`Inputs` and the scorecard; ``health_as_of``
gathers the inputs in bulk and scores. Constants below are the model's documented
assumptions (docs/health.md); the weights, bands and key features are the scorecard's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from statistics import fmean
from typing import Any
from uuid import UUID

from events.scorecard import COMPONENTS
from events.signals import MACHINE_OPEN
from projections.base import counted
from projections.feedback import nps_of
from projections.health_inputs_query import DEFAULT_KEY_FEATURES, BookInputs, Inputs, days_between, gather_at
from projections.store import Tx, ViewStore

IDLE_SAID_AFTER_DAYS = 7  # a usage reason names the last day used when it is longer ago than this
ANSWER_AGE_SAID_AFTER_DAYS = 90  # the sentiment reason says when the latest NPS answer came, past this
THIN_CONFIDENCE = 0.5  # below this share of the weight with data, the score's note says what it rests on
ANSWER_STALE_AFTER_DAYS = 365  # an NPS answer older than this is no reading of today's sentiment: not scored
TARGET_SEAT_ACTIVATION = 0.6  # active users / seats at which usage level scores 100
TARGET_ACTIVE_DAYS = 20  # active days in 30 for full usage level when seats are unknown
OPEN_TICKET_PENALTY = 12
HIGH_PRIORITY_PENALTY = 25
ENGAGED_WITHIN_DAYS, DISENGAGED_AFTER_DAYS = 7, 60
HIGH_PRIORITIES = ("high", "urgent")


@dataclass
class Component:
    name: str
    score: float | None
    weight: float
    inputs: dict[str, Any]
    reason: str

    @property
    def has_data(self) -> bool:
        return self.score is not None


@dataclass
class Health:
    customer_id: str
    as_of: str
    score: float | None
    computed_score: float | None
    band: str
    confidence: float
    components: list[Component]
    drivers: list[str]
    override: dict[str, Any] | None = None
    scorecard: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    usage_note: str | None = None  # the book's: where its usage data stops (see usage_note), the same for every customer

    def as_dict(self) -> dict[str, Any]:
        """Plain data (what ``dataclasses.asdict`` gives, without deep-copying every input)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["components"] = [{**{f.name: getattr(c, f.name) for f in fields(c)}, "has_data": c.score is not None}
                              for c in self.components]  # fmt: skip
        return data


def trend_of(now: Health, prior: Health | None) -> dict[str, Any]:
    """A score's 30-day trend: ``delta_30d`` (None unless both scores exist), ``direction`` (up or
    down beyond 2 points, else flat; None without a delta) and ``score_30d_ago``."""
    delta = None if prior is None or prior.score is None or now.score is None else round(now.score - prior.score, 1)
    direction = None if delta is None else ("up" if delta > 2 else "down" if delta < -2 else "flat")
    return {"delta_30d": delta, "direction": direction, "score_30d_ago": prior.score if prior else None}


def band_of(score: float | None, bands: dict[str, float]) -> str:
    if score is None:
        return "unknown"
    return "green" if score >= bands["green"] else ("yellow" if score >= bands["yellow"] else "red")


def _clamp(value: float) -> float:
    return round(max(0.0, min(100.0, value)), 1)


def usage_data(book: BookInputs, inputs: dict[str, Any]) -> tuple[str, str | None]:
    """How a usage or adoption reason names its window ("the last 30 days", or "the 30 days to
    <the book's last usage day>" when the data stops before as_of, also put in ``inputs``), and
    what it then adds (None: the data is current)."""
    if not book.usage_lag_days or book.usage_stale:
        return "the last 30 days", None
    inputs["usage_data_through"] = book.usage_through
    return (f"the 30 days to {book.usage_through}",
            f"the book's usage data ends {book.usage_through}, {counted(book.usage_lag_days, 'day')} before as_of's date")


def stale_usage(book: BookInputs) -> str:
    """The reason of a usage or adoption component left out because the book's usage data stopped."""
    return (f"no account of the book has usage recorded in the 30 days before as_of's date (the last on "
            f"{book.usage_through}): the data stopped, so this is not scored")


def usage_note(book: BookInputs) -> str | None:
    """What a whole answer says when the book's usage data stops before as_of (None: it does not)."""
    day = book.as_of.date().isoformat()
    if book.usage_stale:
        return (f"no account of the book has usage recorded in the 30 days before {day} (the last on {book.usage_through}): "
                "usage and adoption are left out of every score; is the Mixpanel sync running? (get_sync_status)")  # fmt: skip
    if book.usage_lag_days:
        return (f"the book's usage data ends {book.usage_through}, {counted(book.usage_lag_days, 'day')} before {day}: no "
                "account has usage recorded since, so usage and adoption are scored over the 30 days to then; is the "
                "Mixpanel sync or import current? (get_sync_status)")  # fmt: skip
    return None


def usage_component(i: Inputs, weight: float, book: BookInputs) -> Component:
    seats = i.contract.get("seats")
    inputs = {"active_users_30d": i.active_users_30d, "active_users_prev_30d": i.active_users_prev_30d,
              "active_days_30d": i.active_days_30d, "events_30d": i.events_30d, "seats": seats}  # fmt: skip
    if i.first_usage_day is None:
        return Component("usage", None, weight, inputs, "no usage data for this customer (is its mixpanel_account_id set?)")
    if book.usage_stale:
        return Component("usage", None, weight, {**inputs, "usage_data_through": book.usage_through}, stale_usage(book))
    window, lag = usage_data(book, inputs)
    if seats:
        ratio = i.active_users_30d / seats
        level = min(ratio / TARGET_SEAT_ACTIVATION, 1.0) * 100
        reason = f"{i.active_users_30d} of {seats} seats active in {window} ({ratio:.0%})"
    else:
        level = min(i.active_days_30d / TARGET_ACTIVE_DAYS, 1.0) * 100
        reason = f"active on {i.active_days_30d} of {window} (seats unknown)"
    if i.active_days_30d and i.last_usage_day:
        # Users active early in the window count as much as today's: say when usage stopped
        # (counted to the window's end: days after the book's data ends say nothing).
        inputs["last_usage_day"] = i.last_usage_day
        idle = days_between(book.usage_end or book.as_of.date(), i.last_usage_day)
        if idle > IDLE_SAID_AFTER_DAYS:
            reason += f"; last used {counted(idle, 'day')} {'ago' if lag is None else 'before that'} ({i.last_usage_day})"
    if i.active_users_prev_30d:
        change = (i.active_users_30d - i.active_users_prev_30d) / i.active_users_prev_30d
        inputs["trend_30d"] = round(change, 3)
        score = 0.7 * level + 0.3 * _clamp(50 + 100 * change)
        direction = "flat" if abs(change) < 0.05 else f"{'down' if change < 0 else 'up'} {abs(change):.0%}"
        reason += f"; active users {direction} vs the previous 30 days"
    else:
        score = level
    if lag:
        reason += f" ({lag})"
    return Component("usage", _clamp(score), weight, inputs, reason)


def adoption_component(i: Inputs, weight: float, key_features: set[str], configured: bool, book: BookInputs) -> Component:
    inputs: dict[str, Any] = {"key_features": sorted(key_features), "used_30d": sorted(i.features_30d & key_features),
                              "key_features_source": "scorecard" if configured else DEFAULT_KEY_FEATURES}  # fmt: skip
    if i.first_usage_day is None or not key_features:
        why = "no usage data for this customer" if i.first_usage_day is None else "no features known yet"
        return Component("adoption", None, weight, inputs, why)
    if book.usage_stale:
        return Component("adoption", None, weight, {**inputs, "usage_data_through": book.usage_through}, stale_usage(book))
    window, lag = usage_data(book, inputs)
    used = i.features_30d & key_features
    missing = sorted(key_features - used)
    inputs["not_used_30d"] = missing
    reason = f"{len(used)} of {len(key_features)} key features used in {window}"
    if missing:
        reason += f" (not used: {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''})"
    if lag:
        reason += f" ({lag})"
    return Component("adoption", _clamp(100 * len(used) / len(key_features)), weight, inputs, reason)


def support_component(i: Inputs, weight: float, connected: bool) -> Component:
    open_tickets = [t for t in i.tickets if not t["solved"]]
    high = [t for t in open_tickets if t["priority"] in HIGH_PRIORITIES]
    csat = round(fmean(i.csat_90d), 3) if i.csat_90d else None
    inputs = {"open_tickets": len(open_tickets), "open_high_priority": len(high), "tickets_total": len(i.tickets),
              "csat_90d": csat, "csat_responses_90d": len(i.csat_90d)}  # fmt: skip
    if not i.tickets:
        # No ticket of this customer: "0 open tickets" would be a default, not a reading (it
        # would score a customer nobody knows anything about 100).
        why = ("no tickets on record for this customer (none matched from Zendesk or Intercom)" if connected
               else "no support data recorded yet (no Zendesk or Intercom records)")  # fmt: skip
        return Component("support", None, weight, inputs, why)
    base = 100 - OPEN_TICKET_PENALTY * len(open_tickets) - HIGH_PRIORITY_PENALTY * len(high)
    score = 0.6 * _clamp(base) + 0.4 * 100 * csat if csat is not None else base
    reason = f"{counted(len(open_tickets), 'open ticket')} ({len(high)} high priority)"
    reason += f", CSAT {csat:.0%} over {counted(len(i.csat_90d), 'rating')} in 90 days" if csat is not None else ", no CSAT in 90 days"
    return Component("support", _clamp(score), weight, inputs, reason)


def sentiment_component(i: Inputs, weight: float, as_of: datetime) -> Component:
    if not i.surveys:
        return Component("sentiment", None, weight, {"responses": 0}, "no NPS responses recorded")
    window_start = (as_of - timedelta(days=180)).isoformat()
    recent = [s for at, s in i.surveys if at >= window_start]
    latest_at, latest = i.surveys[-1]
    kind = "promoter" if latest >= 9 else ("passive" if latest >= 7 else "detractor")
    age = days_between(as_of.date(), latest_at)
    if age > ANSWER_STALE_AFTER_DAYS:
        # A promoter's answer from years ago says nothing of today (the champion may have left).
        return Component("sentiment", None, weight, {"latest_score": latest, "latest_at": latest_at, "responses_180d": 0},
                         f"no NPS answer in the last {ANSWER_STALE_AFTER_DAYS} days (the latest, {latest} ({kind}), "
                         f"{counted(age, 'day')} ago on {latest_at[:10]}, is not scored)")  # fmt: skip
    nps = nps_of(recent)
    inputs = {"latest_score": latest, "latest_at": latest_at, "nps_180d": nps, "responses_180d": len(recent)}
    score = 0.6 * latest * 10 + 0.4 * ((nps + 100) / 2) if nps is not None else latest * 10
    when = f" {counted(age, 'day')} ago ({latest_at[:10]})" if age > ANSWER_AGE_SAID_AFTER_DAYS else ""
    reason = f"latest NPS answer {latest} ({kind}){when}" + (f", NPS {nps:+.0f} over 180 days" if nps is not None else "")
    return Component("sentiment", _clamp(score), weight, inputs, reason)


def engagement_component(i: Inputs, weight: float, as_of: datetime) -> Component:
    touched = {k: i.email_kinds[k][1] for k in ("open", "click") if k in i.email_kinds}  # kind -> last at
    last_touch = max(touched.values()) if touched else None
    sent = i.emails_sent
    inputs: dict[str, Any] = {"last_two_way_touch": last_touch, "emails_sent": sent}
    machine = i.email_kinds.get(MACHINE_OPEN, (0, None))[0]
    if machine:
        inputs["machine_opens"] = machine  # Apple Mail Privacy Protection fetched the pixel: nobody's touch
    if not i.email_kinds:
        return Component("engagement", None, weight, inputs, "no e-mail or interaction records for this customer")
    # A bounce (or a send dropped for an address that bounced before) after the last touch: the
    # reader may be gone (said, not scored: a mailbox can come back, a colleague can still read).
    bounced = max((i.email_kinds[k][1] for k in ("bounce", "dropped") if k in i.email_kinds), default=None)
    since = ""
    if bounced is not None and (last_touch is None or bounced > last_touch):
        inputs["bounced_since_last_touch"] = bounced
        since = f"; an e-mail bounced {'since, on' if last_touch else 'on'} {bounced[:10]} (is the contact still there?)"
    if last_touch is None:
        left_out = f"; {counted(machine, 'machine open')} by Apple Mail Privacy Protection left out" if machine else ""
        return Component("engagement", 0.0, weight, inputs,
                         f"no open, click or reply on record ({counted(sent, 'e-mail')} sent{left_out}){since}")  # fmt: skip
    days = days_between(as_of.date(), last_touch)
    inputs["days_since_touch"] = days
    last_kind = max(touched, key=lambda k: (touched[k], k == "click"))  # the reason says which it was
    inputs["last_touch_kind"] = last_kind
    span = DISENGAGED_AFTER_DAYS - ENGAGED_WITHIN_DAYS
    score = 100 if days <= ENGAGED_WITHIN_DAYS else 100 * max(0, DISENGAGED_AFTER_DAYS - days) / span
    return Component("engagement", _clamp(score), weight, inputs, f"last e-mail {last_kind} {counted(days, 'day')} ago{since}")


def financial_component(i: Inputs, weight: float, as_of: datetime) -> Component:
    arr, renewal = i.contract.get("arr"), i.contract.get("renewal_date")
    inputs: dict[str, Any] = {"arr": arr, "renewal_date": renewal, "arr_180d_max": i.arr_180d_max,
                              "renewal_signal": i.renewal_extended}  # fmt: skip
    if arr is None and renewal is None:
        return Component("financial", None, weight, inputs, "no ARR or renewal date recorded")
    score, reasons = 100.0, []
    if renewal and not i.renewal_extended:
        days = (date.fromisoformat(renewal) - as_of.date()).days
        inputs["days_to_renewal"] = days
        if days < 0:
            score, reasons = 20.0, [f"renewal date passed {counted(-days, 'day')} ago with no renewal recorded"]
        elif days <= 30:
            when = "today" if days == 0 else f"in {counted(days, 'day')}"
            score, reasons = 50.0, [f"renews {when} with no renewal signal"]
        elif days <= 90:
            score, reasons = 75.0, [f"renews in {counted(days, 'day')} with no renewal signal"]
    if arr is not None and i.arr_180d_max and arr < i.arr_180d_max:
        drop = 1 - arr / i.arr_180d_max
        inputs["contraction_180d"] = round(drop, 3)
        score -= min(60.0, 100 * drop)
        reasons.append(f"ARR contracted {drop:.0%} in 180 days")
    return Component("financial", _clamp(score), weight, inputs, "; ".join(reasons) or "no renewal risk or contraction")


def score_customer(i: Inputs, book: BookInputs) -> Health:
    card = book.scorecard
    weights = card.full_weights()
    configured = bool(card.key_features)
    key_features = set(card.key_features) if configured else book.book_features
    components = [
        usage_component(i, weights["usage"], book),
        adoption_component(i, weights["adoption"], key_features, configured, book),
        support_component(i, weights["support"], book.support_connected),
        sentiment_component(i, weights["sentiment"], book.as_of),
        engagement_component(i, weights["engagement"], book.as_of),
        financial_component(i, weights["financial"], book.as_of),
    ]
    total = sum(weights[c] for c in COMPONENTS)
    present = [c for c in components if c.has_data and c.weight > 0]
    present_weight = sum(c.weight for c in present)
    computed = round(sum(c.score * c.weight for c in present) / present_weight, 1) if present_weight else None  # type: ignore[operator]
    # Drivers: the components pulling the score down most (weight x distance below 50) first;
    # when nothing is weak, the strongest reasons instead.
    ranked = sorted(present, key=lambda c: c.weight * ((c.score or 0) - 50))
    weak = [c for c in ranked if (c.score or 0) < 70]
    top = [f"{c.name}: {c.reason}" for c in (weak or ranked[::-1])[:3]]
    override = None
    score, band = computed, band_of(computed, card.bands)
    if i.override is not None:
        o = i.override
        override = {"band": o["value"], "score": o["score"], "reason": o["reason"], "author": o["author"],
                    "set_at": o["at"], "expires_at": o["expires_at"]}  # fmt: skip
        band = o["value"]
        score = o["score"] if o["score"] is not None else computed
        top = [f"override by {o['author']} until {o['expires_at'][:10]}: {o['reason']}", *top][:4]
    note = None
    confidence = round(present_weight / total, 3) if total else 0.0
    if computed is None:
        unweighted = [c.name for c in components if c.has_data]  # (none has a weight > 0: the scorecard's choice)
        note = ("no component has data yet: the score stays null rather than a made-up number" if not unweighted else
                f"only {' and '.join(unweighted)} {'has' if len(unweighted) == 1 else 'have'} data, and the scorecard "
                f"weighs {'it' if len(unweighted) == 1 else 'them'} 0: the score stays null rather than a made-up number")  # fmt: skip
    elif confidence < THIN_CONFIDENCE:  # e.g. a new account known by its contract alone: "100, green"
        note = (f"the score rests on {' and '.join(c.name for c in present)} alone ({confidence:.0%} of the scorecard's "
                "weight has data): read it with its confidence")  # fmt: skip
    if i.contract.get("churned_on") and i.contract["churned_on"] <= book.as_of.date().isoformat():
        note = f"churned on {i.contract['churned_on']}"
    return Health(
        customer_id=i.customer_id, as_of=book.as_of.isoformat(), score=score, computed_score=computed, band=band,
        confidence=confidence, components=components, drivers=top,
        override=override, scorecard={"weights": weights, "bands": card.bands, "since": book.scorecard_at}, note=note,
        usage_note=usage_note(book),
    )  # fmt: skip


def health_as_of(store: ViewStore, as_of: datetime, customer_ids: list[UUID] | None = None) -> dict[str, Health]:
    """Health of the given customers (default: everyone registered before ``as_of``)."""
    with store.snapshot() as tx:
        return health_at(tx, [as_of], customer_ids)[0]


def health_at(tx: Tx, instants: Sequence[datetime], customer_ids: list[UUID] | None = None) -> list[dict[str, Health]]:
    """``health_as_of`` at each of several instants, inside a snapshot the caller holds, read in
    one pass (:func:`gather_at`): a score and its trend, or a comparison, cost one set of queries."""
    return [{cid: score_customer(inputs, book) for cid, inputs in book.customers.items()}
            for book in gather_at(tx, instants, customer_ids)]  # fmt: skip


def compare(a: Health, b: Health) -> dict[str, Any]:
    """Why the score changed between two instants, component by component.

    The explanation names the (at most three) components that moved the score most: a component
    whose score moved, weighed by its weight times the move; and a component that gained (or lost)
    data in between, which enters (or leaves) the weighted mean, weighed by its weight times its
    distance from the other instant's overall score (a detractor's first NPS answer can move the
    score as much as any component's fall)."""
    rows, effects = [], []
    for ca, cb in zip(a.components, b.components, strict=True):
        delta = None if ca.score is None or cb.score is None else round(cb.score - ca.score, 1)
        rows.append({"component": ca.name, "from": ca.score, "to": cb.score, "delta": delta,
                     "reason_from": ca.reason, "reason_to": cb.reason})  # fmt: skip
        if delta:
            effects.append((abs(delta) * ca.weight, f"{ca.name} {delta:+.1f}: {cb.reason}"))
        elif ca.score is None and cb.score is not None:
            baseline = a.score if a.score is not None else b.score
            effects.append((abs(cb.score - (baseline or 0.0)) * cb.weight,
                            f"{cb.name} now counted at {cb.score:.1f} (no data before): {cb.reason}"))  # fmt: skip
        elif ca.score is not None and cb.score is None:
            baseline = b.score if b.score is not None else a.score
            effects.append((abs(ca.score - (baseline or 0.0)) * ca.weight,
                            f"{ca.name} no longer counted (it was {ca.score:.1f}): {cb.reason}"))  # fmt: skip
    effects.sort(key=lambda e: e[0], reverse=True)
    delta = None if a.score is None or b.score is None else round(b.score - a.score, 1)
    return {"from": a.as_of, "to": b.as_of, "score_from": a.score, "score_to": b.score, "delta": delta,
            "band_from": a.band, "band_to": b.band, "components": rows,
            "explanation": [line for _, line in effects[:3]]}  # fmt: skip
