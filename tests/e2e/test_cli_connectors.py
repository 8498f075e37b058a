"""`cs import SOURCE FILE` for vendor files, as a user runs it (SQLite, like test_cli.py; the
same import path runs on both backends in tests/integration/test_connector_imports.py): exit 2
with a table (or JSON) of rejected records while the rest goes in, and a second import of the
same file records nothing. And `cs serve --http` refuses a public bind without CS_HTTP_TOKEN."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from events.settings import Settings
from mcp_server.services import open_services
from tests.conftest import MASTER_KEY
from tests.integration.test_connector_imports import CASES
from tests.support.connectors import register_customers

CS = Path(sys.executable).with_name("cs")
MIXPANEL, NPS = (next(c for c in CASES if c.source == source) for source in ("mixpanel", "nps"))


def cs(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CS_DATA_DIR": str(data_dir), "CS_MASTER_KEY": MASTER_KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(CS), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_cs_import_mixpanel_and_nps_reject_bad_records_keep_the_rest_and_are_idempotent(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", master_key=MASTER_KEY)
    with open_services(settings) as svc:
        register_customers(svc)
    mixpanel_file, nps_file = tmp_path / "export.jsonl", tmp_path / "nps.csv"
    mixpanel_file.write_text(MIXPANEL.text)
    nps_file.write_text(NPS.text)

    first = cs(settings.data_dir, "import", "mixpanel", str(mixpanel_file), "--json")
    assert first.returncode == 2, first.stderr  # some records were rejected; the others went in
    report = json.loads(first.stdout)
    assert report["rejected"] == MIXPANEL.rejected
    assert (report["recorded"], report["unmatched"], report["duplicates"]) == (5, 1, 1)  # $insert_id twice: once

    human = cs(settings.data_dir, "import", "nps", str(nps_file))
    assert human.returncode == 2, human.stderr
    assert "3 recorded" in human.stdout and "1 unmatched" in human.stdout and "1 rejected" in human.stdout
    assert "line 5" in human.stdout and "score" in human.stdout and "is not an integer from 0 to 10" in human.stdout

    with open_services(settings) as svc:
        position = svc.app.last_position()
    for case, path in ((MIXPANEL, mixpanel_file), (NPS, nps_file)):
        again = cs(settings.data_dir, "import", case.source, str(path), "--json")
        assert again.returncode == 2, again.stderr
        second = json.loads(again.stdout)
        assert second["recorded"] == 0 and second["duplicates"] == case.recorded + case.duplicates
        assert second["rejected"] == case.rejected
    with open_services(settings) as svc:
        assert svc.app.last_position() == position  # the second imports appended nothing
        svc.engine.ensure_current()
        with svc.store.snapshot() as tx:
            nps = {(r["k"], r["customer_id"]) for r in tx.fetchall(NPS.view)}
            usage = {(r["k"], r["customer_id"]) for r in tx.fetchall(MIXPANEL.view)}
    assert nps == NPS.expected and usage == MIXPANEL.expected  # the unmatched records are kept


def test_serve_http_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    result = cs(tmp_path / "data", "serve", "--http", "--host", "0.0.0.0", "--port", "0")  # exits before binding
    assert result.returncode == 2, result.stderr
    assert "CS_HTTP_TOKEN" in result.stderr and len(result.stderr.strip().splitlines()) == 1
