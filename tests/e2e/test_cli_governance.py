"""`cs verify`, `cs replay` and the `cs rebuild` guard as an operator runs them (SQLite)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from tests.e2e.test_cli import HEADER, cs

ROWS = (
    "acme,Acme,acme.example,software,growth,100,5,2025-01-01,2027-01-01,Dana,Ann,ann@acme.example\n"
    "globex,Globex,globex.example,energy,enterprise,900,50,2025-02-01,2027-02-01,Sam,Bo,bo@globex.example\n"
)


def import_book(data_dir: Path, rows: str = ROWS) -> None:
    book = data_dir.parent / "book.csv"
    book.write_text(HEADER + rows)
    assert cs(data_dir, "import", "customers", str(book), "--json").returncode == 0


def test_verify_clean_then_tampered(tmp_path: Path) -> None:
    data = tmp_path / "data"
    import_book(data)  # `cs import` does not run projections: verify links the new events first
    clean = cs(data, "verify", "--json")
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    assert report["ok"] is True and report["checked"] == report["head"] == 4 and report["unverified"] == 0
    human = cs(data, "verify")
    assert human.returncode == 0 and "intact: 4 event(s) checked" in human.stdout

    conn = sqlite3.connect(data / "events.sqlite")
    with conn:
        (state,) = conn.execute("SELECT state FROM stored_events WHERE rowid = 3").fetchone()
        conn.execute("UPDATE stored_events SET state = ? WHERE rowid = 3", (state.replace(b"Globex", b"Glob3x"),))
    conn.close()

    broken = cs(data, "verify")
    assert broken.returncode == 1
    assert broken.stderr.splitlines() == [
        (
            "cs verify: broken at position 3: stored event differs from the one that was linked "
            "(hash mismatch: its bytes or its link changed)"
        )
    ]
    as_json = cs(data, "verify", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["first_broken"] == 3

    # `cs rebuild` leaves the chain alone (a rebuild would re-link the tampered log) ...
    rebuilt = cs(data, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    out = json.loads(rebuilt.stdout)
    assert [s["projection"] for s in out["skipped"]] == ["audit_chain_v1"]
    assert "audit_chain_v1" not in {p["projection"] for p in out["projections"]}
    assert cs(data, "verify").returncode == 1
    # ... and refuses to rebuild it by name while it is broken.
    refused = cs(data, "rebuild", "audit_chain_v1")
    assert refused.returncode == 1 and "refusing to rebuild audit_chain_v1" in refused.stderr
    assert "broken at position 3" in refused.stderr


def test_replay(tmp_path: Path) -> None:
    data = tmp_path / "data"
    import_book(data)
    t1 = datetime.now(timezone.utc).isoformat()
    import_book(data, ROWS.replace(",100,5,", ",250,8,"))  # acme's contract changes after T1

    past = cs(data, "replay", "--customer", "acme", "--as-of", t1, "--json")
    assert past.returncode == 0, past.stderr
    state = json.loads(past.stdout)["state"]
    assert state["profile"]["arr"] == 100 and state["contacts"][0]["email"] == "ann@acme.example"
    # ARR and a renewal date were known: the financial component scores (the stage follows the model too).
    assert state["health"]["score"] is not None and state["health"]["drivers"] and state["stage"] is not None
    now = json.loads(cs(data, "replay", "--customer", "acme", "--as-of", "2999-01-01", "--json").stdout)
    assert now["state"]["profile"]["arr"] == 250
    known = cs(data, "replay", "--customer", "acme", "--as-of", "2999-01-01", "--known-at", t1, "--json")
    as_known = json.loads(known.stdout)["state"]
    assert as_known["profile"]["arr"] == 100 and as_known["health"]["score"] is None and as_known["stage"] is None

    human = cs(data, "replay", "--customer", "acme", "--as-of", t1)
    assert human.returncode == 0 and "Acme (active)" in human.stdout and "customer.registered" in human.stdout
    before = cs(data, "replay", "--customer", "acme", "--as-of", "2000-01-01T00:00:00")
    assert before.returncode == 0 and "did not exist yet" in before.stdout

    bad = cs(data, "replay", "--customer", "acme", "--as-of", "last tuesday")
    assert bad.returncode == 2 and bad.stderr.startswith("cs replay: --as-of: 'last tuesday' is not an ISO 8601 time")
    bad_known = cs(data, "replay", "--customer", "acme", "--as-of", t1, "--known-at", "soon")
    assert bad_known.returncode == 2 and "--known-at:" in bad_known.stderr
    unknown = cs(data, "replay", "--customer", "nobody", "--as-of", t1)
    assert unknown.returncode == 2 and unknown.stderr.startswith("cs replay: --customer: no customer 'nobody'")
