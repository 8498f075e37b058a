"""The demo's sample book stands as it was written on the day of the first demo into a store, and
stays anchored there: its contract dates are moved once, not on every run."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from importlib import resources

from connectors.customers import import_customers, read_rows
from events.commands import CommandMeta
from mcp_server.sample_data import DATE_COLUMNS, SAMPLE_DAY, sample_shift, shift_dates
from mcp_server.services import Services

WRITTEN = (resources.files("mcp_server") / "sample" / "customers.csv").read_text(encoding="utf-8")
META = CommandMeta(actor="test", source="test")


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_shift_dates_moves_every_date_and_nothing_else() -> None:
    written, moved = rows(WRITTEN), rows(shift_dates(WRITTEN, 40))
    assert len(moved) == len(written) == 20
    for before, after in zip(written, moved, strict=True):
        for column, value in before.items():
            if column in DATE_COLUMNS and value:
                assert date.fromisoformat(after[column]) - date.fromisoformat(value) == timedelta(days=40), column
            else:
                assert after[column] == value, column  # names, ARR, ids... and the empty churn dates
    assert sum(bool(r["churned_at"]) for r in moved) == 2
    assert shift_dates(shift_dates(WRITTEN, 40), -40) == WRITTEN


def test_the_first_demo_anchors_the_book_and_later_runs_keep_it(services: Services) -> None:
    first_day = date(2027, 3, 9)
    shift = sample_shift(services.app, WRITTEN, first_day)
    assert shift == (first_day - SAMPLE_DAY).days  # nothing registered yet: the book as of today
    report = import_customers(services.app, read_rows(io.StringIO(shift_dates(WRITTEN, shift))), actor="test",
                              source_name="customers.csv")  # fmt: skip
    assert report.created == 20 and not report.rejected

    # Forty days later the book is where the first run put it: the same dates, nothing to record.
    assert sample_shift(services.app, WRITTEN, first_day + timedelta(days=40)) == shift
    again = import_customers(services.app, read_rows(io.StringIO(shift_dates(WRITTEN, shift))), actor="test",
                             source_name="customers.csv")  # fmt: skip
    assert again.unchanged == 20

    # A contract edited since does not move the anchor (it is read from the registration).
    first_key = rows(WRITTEN)[0]["external_key"]
    services.app.update_customer(first_key, {"contract_start": "2020-01-01"}, META)
    assert sample_shift(services.app, WRITTEN, first_day + timedelta(days=90)) == shift
