"""What a Mixpanel import stores, pinned: the events a chunked import appends (in log order, each
with its aggregate, version, topic and state as eventsourcing's own ``JSONTranscoder`` decodes
it) are those recorded in ``golden/mixpanel_import_events.json``, written by the import code of
main 4372022 (before the third round of import work) from the same lines on SQLite.

The file is the 2,400-line export of ``test_connector_imports`` (known and unknown accounts,
repeated and missing ``$insert_id``, times in seconds, milliseconds and ISO text, bad lines):
its first 1,200 lines imported in chunks of 300, then the whole file in chunks of 300 (days
partly, wholly and not yet seen). Only what wall clocks set is left out: every event's
``timestamp`` and the connector's batch records' ``occurred_at``.

Regenerate (only when a change of the stored events is intended and explained):
``python -m tests.integration.test_mixpanel_stored_events``."""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import JSONTranscoder

from connectors.service import Ingestion
from events.settings import Settings
from mcp_server.services import Services, open_services
from projections.profile import CustomerDirectory
from tests.integration.test_connector_imports import _big_mixpanel_lines
from tests.support.connectors import register_customers

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


def import_twice(settings: Settings) -> list[dict[str, Any]]:
    lines = _big_mixpanel_lines()
    with open_services(settings) as svc:
        register_customers(svc)
        head = svc.app.last_position()
        ingestion = Ingestion(svc.app, CustomerDirectory(svc.store), settings, actor="test", usage_chunk=300)
        ingestion.import_file("mixpanel", io.StringIO("\n".join(lines[:1_200]) + "\n"), "first-half.jsonl")
        ingestion.import_file("mixpanel", io.StringIO("\n".join(lines) + "\n"), "whole.jsonl")
        return stored_events(svc, head)


def test_a_chunked_import_stores_the_pinned_events(settings: Settings) -> None:
    got = import_twice(settings)
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert len(got) == len(expected)
    for i, (ours, pinned) in enumerate(zip(got, expected, strict=True)):
        assert ours == pinned, f"stored event {i} differs"


if __name__ == "__main__":  # regenerate the pinned events (see the module doc)
    import base64
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        events = import_twice(Settings(data_dir=Path(tmp), master_key=base64.b64encode(bytes(range(32))).decode()))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\n]\n", encoding="utf-8")
    print(f"{len(events)} events written to {GOLDEN}", file=sys.stderr)
