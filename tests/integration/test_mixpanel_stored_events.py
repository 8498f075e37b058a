"""What a Mixpanel import stores, pinned: the events a chunked import appends (in log order, each
with its aggregate, version, topic and state as eventsourcing's own ``JSONTranscoder`` decodes
it) are those recorded in ``golden/mixpanel_import_events.json``, written by the import code of
main 4372022 (before the third round of import work) from the same lines on SQLite.

Two files, each imported first in part, then whole, in chunks (days partly, wholly and not yet
seen): ``irregular``, the 2,400-line export of ``test_connector_imports`` (known and unknown
accounts, repeated and missing ``$insert_id``, times in seconds, milliseconds and ISO text, bad
lines), which the worker parses line by line; ``usual``, lines of the export's usual shape in
time order, which it parses column by column (two accounts matched to one customer by e-mail
domain, so their days are merged; events without an account). Only what wall clocks set is
left out: every event's ``timestamp`` and the connector's batch records' ``occurred_at``.

Also: the usage days carried from one chunk's commit to the next (events.ingest.UsageCarry) are
read from the store again when another writer appended to one in between.

Regenerate the pinned events (only when a change of the stored events is intended and explained):
``python -m tests.integration.test_mixpanel_stored_events``."""

from __future__ import annotations

import gc
import io
import json
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder

from connectors.service import Ingestion
from events.settings import Settings
from mcp_server.services import Services, open_services
from projections.profile import CustomerDirectory
from events.signals import UsageDay
from tests.integration.test_connector_imports import _big_mixpanel_lines, _usage_expected, _usage_rows
from tests.support.connectors import ACME, register_customers

GOLDEN = Path(__file__).parent / "golden" / "mixpanel_import_events.json"
CONNECTOR_TOPIC = "events.signals:Connector."


def _plain(value: Any) -> Any:
    """A decoded state value as JSON can hold it (datetimes and UUIDs tagged, so they stay apart from strings)."""
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, UUID):
        return {"uuid": str(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def stored_events(svc: Services, after: int) -> list[dict[str, Any]]:
    """The events appended after notification ``after``, decoded by eventsourcing's own transcoder."""
    transcoder = svc.app.construct_transcoder()
    assert type(transcoder) is JSONTranscoder
    out = []
    for n in svc.app.recorder.select_notifications(after + 1, limit=1_000_000):
        state = transcoder.decode(bytes(n.state))
        state.pop("timestamp")
        if n.topic.startswith(CONNECTOR_TOPIC):
            state.pop("occurred_at")
        out.append({"id": str(n.originator_id), "version": n.originator_version, "topic": n.topic,
                    "state": _plain(state)})  # fmt: skip
    return out


def _usual_lines() -> list[str]:
    """3,000 lines of the export's usual shape (unix seconds, ``$insert_id``, every property
    present), ordered by time over three UTC days, the last second of a day included; accounts
    matched by id, two matched to Initech by their users' e-mail domain, an unknown one, none."""
    rng = random.Random(11)
    accounts = [("acct-acme", "pat@acme.example"), ("acct-globex", None), ("acct-init-a", "bo@initech.example"),
                ("acct-init-b", "cy@initech.example"), ("acct-ghost", None), ("", None)]  # fmt: skip
    names = ["$session_start", "Report Viewed", "Export", "Search", "Invite Sent", "Über Ansicht — 日本"]
    start = int(datetime(2026, 2, 2, tzinfo=UTC).timestamp())
    moments = sorted(rng.randrange(start, start + 3 * 86_400) for _ in range(2_999)) + [start + 86_400 - 1]
    lines = []
    for i, moment in enumerate(sorted(moments)):
        account, email = rng.choice(accounts)
        props = {"time": moment, "distinct_id": f"{account or 'anon'}-u{rng.randrange(9)}", "$insert_id": f"ins-{i:05d}",
                 "account_id": account, "$email": email, "mp_lib": "web"}  # fmt: skip
        lines.append(json.dumps({"event": rng.choice(names), "properties": props}, separators=(",", ":")))
    return lines


CASES = {"irregular": (_big_mixpanel_lines, 1_200, 300), "usual": (_usual_lines, 1_800, 500)}


def import_twice(settings: Settings, case: str) -> list[dict[str, Any]]:
    make, part, chunk = CASES[case]
    lines = make()
    with open_services(settings) as svc:
        register_customers(svc)
        head = svc.app.last_position()
        ingestion = Ingestion(svc.app, CustomerDirectory(svc.store), settings, actor="test", usage_chunk=chunk)
        ingestion.import_file("mixpanel", io.StringIO("\n".join(lines[:part]) + "\n"), "part.jsonl")
        ingestion.import_file("mixpanel", io.StringIO("\n".join(lines) + "\n"), "whole.jsonl")
        return stored_events(svc, head)


@pytest.mark.parametrize("case", CASES)
def test_a_chunked_import_stores_the_pinned_events(settings: Settings, case: str) -> None:
    got = import_twice(settings, case)
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))[case]
    assert len(got) == len(expected)
    for i, (ours, pinned) in enumerate(zip(got, expected, strict=True)):
        assert ours == pinned, f"stored event {i} differs"


def test_a_day_another_writer_appends_to_between_chunks_is_read_again(settings: Settings) -> None:
    """The days a chunk commits are carried to the next chunk at their stored state; when another
    writer appends to one in between, the next chunk's commit conflicts, is rebuilt from the
    store and goes in: the day holds both (and the import records all of its events)."""
    lines = _big_mixpanel_lines()  # each 300-line chunk holds events of every one of its days
    expected, _, _, _ = _usage_expected(lines)
    day = "2026-02-03"
    uid = UsageDay.create_id(ACME, "", day)
    with open_services(settings) as svc:
        register_customers(svc)
        ingestion = Ingestion(svc.app, CustomerDirectory(svc.store), settings, actor="test", usage_chunk=300)

        def rival_after_first_chunk(_: int, calls: list[int] = []) -> None:  # noqa: B006
            calls.append(1)
            if len(calls) == 1:
                usage: UsageDay = svc.app.repository.get(uid)
                usage.count(events=1, sessions=0, users=[], features={"Rival Feature": 1}, insert_ids=["rival"],
                            actor="rival", source="test", source_id="rival", occurred_at=datetime(2026, 2, 3, 12))  # fmt: skip
                svc.app.save(usage)

        report = ingestion.import_file("mixpanel", io.StringIO("\n".join(lines) + "\n"), "big.jsonl",
                                       rival_after_first_chunk)  # fmt: skip
        assert report.recorded == sum(r[3] for r in expected)
        rows = _usage_rows(svc)
    acme_day = next(r for r in expected if r[:3] == (ACME, "", day))
    with_rival = (*acme_day[:3], acme_day[3] + 1, *acme_day[4:6], tuple(sorted([*acme_day[6], ("Rival Feature", 1)])))
    assert rows == expected - {acme_day} | {with_rival}


def test_an_import_stopped_between_chunks_leaves_no_commit_behind(settings: Settings) -> None:
    """When the caller stops an import at a chunk's report (here its progress callback raises),
    no later chunk is committed (the worker may have parsed some already), the cyclic
    collector, off for the import, is on again, and importing the file again records exactly
    the rest (every event once in the end)."""
    lines = _big_mixpanel_lines()
    expected, _, _, _ = _usage_expected(lines)
    text = "\n".join(lines) + "\n"
    with open_services(settings) as svc:
        register_customers(svc)
        ingestion = Ingestion(svc.app, CustomerDirectory(svc.store), settings, actor="test", usage_chunk=300)
        positions: list[int] = []

        def stop_at_the_second_report(received: int) -> None:
            positions.append(svc.app.last_position())
            if len(positions) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            ingestion.import_file("mixpanel", io.StringIO(text), "big.jsonl", stop_at_the_second_report)
        assert positions[0] < positions[1] == svc.app.last_position()  # two chunks stored, nothing after
        assert gc.isenabled()
        stored_before = sum(r[3] for r in _usage_rows(svc))
        rest = ingestion.import_file("mixpanel", io.StringIO(text), "big.jsonl")
        assert _usage_rows(svc) == expected
        again = ingestion.import_file("mixpanel", io.StringIO(text), "big.jsonl")
    assert 0 < stored_before and stored_before + rest.recorded == sum(r[3] for r in expected)
    assert again.recorded == 0


if __name__ == "__main__":  # regenerate the pinned events (see the module doc)
    import base64
    import tempfile

    pinned = {}
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            key = base64.b64encode(bytes(range(32))).decode()
            pinned[name] = import_twice(Settings(data_dir=Path(tmp), master_key=key), name)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text("{\n" + ",\n".join(
        f"{json.dumps(name)}: [\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\n]"
        for name, events in pinned.items()) + "\n}\n", encoding="utf-8")  # fmt: skip
    print(f"{sum(map(len, pinned.values()))} events written to {GOLDEN}", file=sys.stderr)
