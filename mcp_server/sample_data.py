"""The demo's sample book in the vendors' own formats, generated relative to today.

Every value is derived deterministically from the customer's key and the day (SHA-256, no
random numbers), so two runs on the same day produce identical files and a re-import records
nothing new. A few accounts are given a story a CSM should spot: usage falling away, tickets
piling up, a detractor NPS, e-mails bouncing.

The book itself (``sample/customers.csv``) was written as of :data:`SAMPLE_DAY`: its contract
dates tell their stories relative to that day (a renewal in two weeks, one just missed, churns
two and three months ago). The demo moves every date of the book by the same number of days so
that it stands as written on the day of the first demo into a store, and keeps that shift on
later runs (:func:`sample_shift`), so a second run records nothing new and time passes for the
book as it would for a real one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from events.domain import customer_id_for
from events.signals import MACHINE_OPEN

FEATURES = ("Viewed Dashboard", "Created Report", "Exported CSV", "Invited Teammate", "Configured Integration")
DAYS = 60
# Stories: key -> (usage trend per day over the window, tickets, nps score, e-mail bounces, and
# whether its people read mail in Apple Mail with Privacy Protection: every delivered message then
# gets a machine open, which must not pass for engagement)
STORIES: dict[str, dict[str, Any]] = {
    "brightpath": {"trend": -0.9, "tickets": 6, "urgent": 3, "nps": 3, "bounce": True},
    "vantage-legal": {"trend": -0.5, "tickets": 8, "urgent": 2, "nps": 5, "bounce": False, "apple_mail": True},
    "sparrow-hr": {"trend": -1.0, "tickets": 1, "urgent": 0, "nps": 6, "bounce": True},
    "cobalt-energy": {"trend": -0.3, "tickets": 4, "urgent": 1, "nps": 7, "bounce": False},
}
HEALTHY = {"trend": 0.1, "tickets": 1, "urgent": 0, "nps": 9, "bounce": False}
SAMPLE_DAY = date(2026, 11, 25)  # the day the dates of sample/customers.csv were written for
DATE_COLUMNS = ("contract_start", "renewal_date", "churned_at")  # moved together by sample_shift's days


def unit(*parts: object) -> float:
    """A number in [0, 1) fixed by its inputs."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SampleCustomer:
    key: str
    domain: str
    seats: int
    contact_email: str
    zendesk_org_id: str | None
    intercom_company_id: str | None
    mixpanel_account_id: str | None
    churned: bool


def read_customers(csv_text: str) -> list[SampleCustomer]:
    return [
        SampleCustomer(
            key=r["external_key"], domain=r["domain"], seats=int(r["seats"] or 0), contact_email=r["contact_email"],
            zendesk_org_id=r.get("zendesk_org_id") or None, intercom_company_id=r.get("intercom_company_id") or None,
            mixpanel_account_id=r.get("mixpanel_account_id") or None, churned=bool(r.get("churned_at")),
        )  # fmt: skip
        for r in csv.DictReader(io.StringIO(csv_text))
    ]


def shift_dates(customers_csv: str, days: int) -> str:
    """The sample book with every date of :data:`DATE_COLUMNS` moved by ``days`` days (empty cells
    and every other column as they are)."""
    reader = csv.DictReader(io.StringIO(customers_csv))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(reader.fieldnames or ()), lineterminator="\n")
    writer.writeheader()
    for row in reader:
        for column in DATE_COLUMNS:
            if row.get(column):
                row[column] = (date.fromisoformat(row[column]) + timedelta(days=days)).isoformat()
        writer.writerow(row)
    return out.getvalue()


def sample_shift(app: Any, customers_csv: str, today: date) -> int:
    """The days to move the sample book's dates by (:func:`shift_dates`): from :data:`SAMPLE_DAY` to
    ``today`` on the first demo into this store; on later runs, the shift the first run applied,
    read from the contract start the book's first customer was registered with (edits made since
    do not change it). A customer of that key registered otherwise, without a contract start, is
    not the sample's: the shift is then today's."""
    first = next(csv.DictReader(io.StringIO(customers_csv)))
    try:
        registered = app.repository.get(customer_id_for(first["external_key"]), version=1)
    except AggregateNotFoundError:
        return (today - SAMPLE_DAY).days
    start = registered.profile.get("contract_start")
    if not start or not first.get("contract_start"):
        return (today - SAMPLE_DAY).days
    return (date.fromisoformat(str(start)[:10]) - date.fromisoformat(first["contract_start"])).days


def _at(day: date, fraction: float) -> datetime:
    return datetime.combine(day, time(), timezone.utc) + timedelta(seconds=int(fraction * 86399))


def mixpanel_lines(customers: list[SampleCustomer], today: date) -> list[str]:
    lines = []
    for c in customers:
        if c.churned or not c.mixpanel_account_id:
            continue
        story = STORIES.get(c.key, HEALTHY)
        pool = max(3, min(int(c.seats * 0.45), 30))
        for back in range(DAYS, 0, -1):
            day = today - timedelta(days=back)
            progress = (DAYS - back) / DAYS  # 0 at the start of the window, 1 yesterday
            level = max(0.0, 0.75 + story["trend"] * progress)
            if day.weekday() >= 5:
                level *= 0.3
            # A falling level loses whole users (the tail of the pool), not just busy days.
            users = [u for u in range(pool) if u < pool * min(level / 0.75, 1.0) and unit(c.key, day, u) < 0.75]
            for u in users:
                breadth = len(FEATURES) * min(level / 0.75, 1.0)  # advanced features go first
                names = ["$session_start", *[f for i, f in enumerate(FEATURES)
                                             if i < breadth and unit(c.key, day, u, f) < 0.6 - 0.1 * i]]  # fmt: skip
                for n, name in enumerate(names):
                    moment = _at(day, unit(c.key, day, u, n))
                    lines.append(json.dumps({"event": name, "properties": {
                        "time": int(moment.timestamp()), "distinct_id": f"{c.key}-user-{u}",
                        "$insert_id": hashlib.sha256(f"{c.key}|{day}|{u}|{n}".encode()).hexdigest()[:20],
                        "account_id": c.mixpanel_account_id, "mp_processing_time_ms": int(moment.timestamp() * 1000)}}))  # fmt: skip
    return lines


def zendesk_page(customers: list[SampleCustomer], today: date) -> dict[str, Any]:
    tickets = []
    for c in customers:
        story = STORIES.get(c.key, HEALTHY)
        if not c.zendesk_org_id:
            continue
        for t in range(story["tickets"]):
            opened = _at(today - timedelta(days=int(2 + unit(c.key, "t", t) * 40)), unit(c.key, "o", t))
            recent = (today - opened.date()).days < 14
            solved = not recent or unit(c.key, "s", t) < 0.3
            urgent = t < story["urgent"]
            updated = opened + timedelta(hours=4 + int(unit(c.key, "u", t) * 60))
            rating = None
            if solved and unit(c.key, "r", t) < 0.7:
                rating = {"id": int(unit(c.key, "rid", t) * 1e9), "score": "bad" if urgent else "good", "comment": None}
            tickets.append({
                "id": 10_000 + len(tickets), "status": "solved" if solved else ("open" if urgent else "pending"),
                "priority": "urgent" if urgent else ("normal" if unit(c.key, "p", t) < 0.8 else "low"),
                "type": "incident" if urgent else "question", "subject": f"Question about {FEATURES[t % len(FEATURES)]}",
                "requester_id": 500 + t, "organization_id": int(c.zendesk_org_id), "created_at": opened.isoformat(),
                "updated_at": updated.isoformat(), "generated_timestamp": int(updated.timestamp()),
                "satisfaction_rating": rating, "via": {"channel": "email", "source": {"from": {"address": c.contact_email}}},
            })  # fmt: skip
    tickets.sort(key=lambda t: (t["generated_timestamp"], t["id"]))
    return {"tickets": tickets, "after_cursor": None, "end_of_stream": True}


def intercom_conversations(customers: list[SampleCustomer], today: date) -> list[dict[str, Any]]:
    out = []
    for c in customers:
        if not c.intercom_company_id or c.churned:
            continue
        for n in range(1 + int(unit(c.key, "ic") * 3)):
            created = _at(today - timedelta(days=int(1 + unit(c.key, "icd", n) * 30)), unit(c.key, "ict", n))
            closed = unit(c.key, "icc", n) < 0.8
            out.append({
                "type": "conversation", "id": str(900_000 + len(out)), "created_at": int(created.timestamp()),
                "updated_at": int(created.timestamp()) + 3600, "state": "closed" if closed else "open", "open": not closed,
                "priority": "not_priority", "custom_attributes": {"company_id": c.intercom_company_id},
                "source": {"type": "conversation", "delivered_as": "customer_initiated", "subject": "",
                           "body": "<p>How do I share a report?</p>", "author": {"type": "user", "email": c.contact_email}},
                "conversation_rating": {"rating": 5 if STORIES.get(c.key) is None else 2, "remark": None,
                                        "created_at": int(created.timestamp()) + 7200} if closed else None,
            })  # fmt: skip
    return out


def sendgrid_events(customers: list[SampleCustomer], today: date) -> list[dict[str, Any]]:
    events = []
    for c in customers:
        if c.churned:
            continue
        story = STORIES.get(c.key, HEALTHY)
        for m in range(4):
            sent = _at(today - timedelta(days=7 * m + 1), unit(c.key, "m", m))
            message = hashlib.sha256(f"{c.key}|msg|{m}".encode()).hexdigest()[:22]
            kinds = ["processed", "bounce"] if story["bounce"] and m == 0 else ["processed", "delivered"]
            if kinds[-1] == "delivered" and story.get("apple_mail"):
                kinds.append(MACHINE_OPEN)  # Apple fetched the pixel on delivery, read or not
            if kinds[1] == "delivered" and unit(c.key, "open", m) < (0.2 if c.key in STORIES else 0.8):
                kinds += ["open", "click"] if unit(c.key, "click", m) < 0.5 else ["open"]
            for k, kind in enumerate(kinds):
                event = {"email": c.contact_email, "timestamp": int(sent.timestamp()) + 60 * k,
                         "event": "open" if kind == MACHINE_OPEN else kind,
                         "sg_event_id": hashlib.sha256(f"{message}|{kind}".encode()).hexdigest()[:22],
                         "sg_message_id": f"{message}.filter0001"}  # fmt: skip
                if event["event"] == "open":
                    event["sg_machine_open"] = kind == MACHINE_OPEN  # SendGrid sets it on every open
                if kind == "bounce":
                    event.update({"reason": "550 5.1.1 mailbox unavailable", "status": "5.1.1", "type": "bounce"})
                if kind == "click":
                    event["url"] = "https://app.example/reports"
                events.append(event)
    return events


def nps_csv(customers: list[SampleCustomer], today: date) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["response_id", "customer", "email", "score", "comment", "responded_at"])
    for c in customers:
        if c.churned:
            continue
        score = STORIES.get(c.key, HEALTHY)["nps"] - (0 if c.key in STORIES else int(unit(c.key, "nps") * 2))
        comment = "Reports keep timing out and support is slow" if score <= 6 else "Does what we need"
        responded = (today - timedelta(days=int(5 + unit(c.key, "npsd") * 20))).isoformat()
        writer.writerow([f"nps-{c.key}-{today.year}Q", c.key, c.contact_email, score, comment, responded])
    return out.getvalue()


def write_sample_files(customers_csv: str, folder: Path, today: date) -> dict[str, Path]:
    """Write one file per source into ``folder``; returns source -> path, in import order."""
    folder.mkdir(parents=True, exist_ok=True)
    customers = read_customers(customers_csv)
    files = {
        "zendesk": ("zendesk-tickets.json", json.dumps(zendesk_page(customers, today))),
        "intercom": ("intercom-conversations.json", json.dumps(intercom_conversations(customers, today))),
        "mixpanel": ("mixpanel-export.jsonl", "\n".join(mixpanel_lines(customers, today)) + "\n"),
        "sendgrid": ("sendgrid-events.json", json.dumps(sendgrid_events(customers, today))),
        "nps": ("nps-responses.csv", nps_csv(customers, today)),
    }
    paths = {}
    for source, (name, text) in files.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths[source] = path
    return paths
