"""The `cs` command line as a user runs it: exit codes, JSON output, idempotent imports."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

from mcp_server.sample_data import SAMPLE_DAY
from tests.conftest import MASTER_KEY

CS = Path(sys.executable).with_name("cs")
SAMPLE = Path(__file__).parents[2] / "mcp_server/sample/customers.csv"
HEADER = (
    "external_key,name,domain,industry,tier,arr,seats,contract_start,renewal_date,owner,contact_name,contact_email\n"
)


def cs(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"CS_DATA_DIR": str(data_dir), "CS_MASTER_KEY": MASTER_KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(CS), *args], input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_demo_loads_the_sample_book_and_is_repeatable(tmp_path: Path) -> None:
    first = cs(tmp_path, "demo", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    sample_rows = len(SAMPLE.read_text().splitlines()) - 1
    assert report["import"]["created"] == sample_rows and report["import"]["rejected"] == []
    board = report["dashboard"]
    assert board["customers"] == sample_rows and board["churned"] == 2
    assert board["active_arr"] == sum(r["arr"] for r in board["rows"] if r["status"] == "active")
    # The book stands as it was written (a renewal in 19 days, one missed 11 days ago...) whatever today is.
    written = {r["external_key"]: r for r in csv.DictReader(io.StringIO(SAMPLE.read_text()))}
    for row in board["rows"]:
        due = date.fromisoformat(written[row["external_key"]]["renewal_date"])
        assert row["days_to_renewal"] == (due - SAMPLE_DAY).days, row["external_key"]

    # Vantage Legal reads its mail in Apple Mail: the machine opens of its 4 messages are no engagement.
    vantage = next(r for r in board["rows"] if r["external_key"] == "vantage-legal")
    assert vantage["band"] == "yellow" and vantage["driver"] == (
        "engagement: no open, click or reply on record (4 e-mails sent; 4 machine opens by Apple Mail Privacy "
        "Protection left out)")  # fmt: skip

    second = json.loads(cs(tmp_path, "demo", "--json").stdout)
    assert second["import"]["unchanged"] == sample_rows and second["import"]["created"] == 0
    assert second["log_position"] == report["log_position"]
    assert second["sample_dates_moved_by_days"] == report["sample_dates_moved_by_days"]

    human = cs(tmp_path, "demo")
    assert human.returncode == 0 and "Northwind Logistics" in human.stdout and "cs serve" in human.stdout
    # Sparrow HR's renewal date passed 11 days before the sample day, and it is still active.
    sparrow = next(r for r in board["rows"] if r["external_key"] == "sparrow-hr")
    assert sparrow["days_to_renewal"] == -11 and (board["renewals_overdue"], board["renewals_overdue_arr"]) == (1, sparrow["arr"])
    assert "1 renewal overdue (date passed, no renewal or churn recorded) worth 11,800" in " ".join(human.stdout.split())


def test_import_reports_rejected_rows_and_exits_2(tmp_path: Path) -> None:
    csv_path = tmp_path / "book.csv"
    csv_path.write_text(
        HEADER
        + "acme,Acme,acme.example,software,growth,100,5,2025-01-01,2026-01-01,Dana,Ann,ann@acme.example\n"
        + "bad,Bad,bad.example,software,growth,-100,5,2025-01-01,2026-01-01,Dana,Bo,bo@bad.example\n"
    )
    result = cs(tmp_path / "data", "import", "customers", str(csv_path), "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["created"] == 1
    assert report["rejected"] == [
        {"line": 3, "external_key": "bad", "field": "arr", "reason": "Input should be greater than or equal to 0"}
    ]
    again = cs(tmp_path / "data", "import", "customers", "-", "--json", stdin=csv_path.read_text())
    assert json.loads(again.stdout)["unchanged"] == 1


def test_bad_arguments_exit_2_with_one_line_reason(tmp_path: Path) -> None:
    missing = cs(tmp_path, "import", "customers", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and len(missing.stderr.splitlines()) == 1
    unknown = cs(tmp_path, "import", "salesforce", str(tmp_path / "nope.csv"))
    assert unknown.returncode == 2 and "unknown import source 'salesforce'" in unknown.stderr
    header = tmp_path / "h.csv"
    header.write_text("name\nAcme\n")
    bad_header = cs(tmp_path, "import", "customers", str(header))
    assert bad_header.returncode == 2 and "header: missing column(s) external_key" in bad_header.stderr


def test_rebuild_and_tools(tmp_path: Path) -> None:
    assert cs(tmp_path, "demo", "--json").returncode == 0
    rebuilt = cs(tmp_path, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    status = json.loads(rebuilt.stdout)
    assert all(p["lag"] == 0 for p in status["projections"])
    assert status["events_processed"] == len(status["projections"]) * status["projections"][0]["position"]
    assert cs(tmp_path, "rebuild", "nonsense_v9").returncode == 2

    tools = json.loads(cs(tmp_path, "tools", "--json").stdout)
    assert {t["name"] for t in tools} >= {"register_client", "list_clients"}
    markdown = cs(tmp_path, "tools", "--markdown").stdout
    assert f"{len(tools)} tools" in markdown
