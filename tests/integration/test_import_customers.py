"""`cs import customers`: idempotent, per-row rejection, header checks (both backends)."""

from __future__ import annotations

import io
import re

import pytest

from events.domain import customer_id_for
from connectors.customers import CsvFormatError, import_customers, read_rows
from mcp_server.services import Services

HEADER = (
    "external_key,name,domain,industry,tier,arr,seats,contract_start,renewal_date,owner,"
    "contact_name,contact_email,zendesk_org_id,churned_at,churn_reason\n"
)
GOOD = (
    "acme,Acme Corp,acme.example,software,growth,42000,50,2025-01-01,2027-01-01,Dana,Ann Lee,ann@acme.example,901,,\n"
    "beta,Beta LLC,beta.example,retail,starter,5000,5,2025-06-01,2026-06-01,Sam,Bo Chen,bo@beta.example,,2026-06-01,price\n"
)
BAD = (
    "gamma,Gamma,gamma.example,media,growth,-10,5,2025-01-01,2026-01-01,Sam,Cy,cy@gamma.example,,,\n"  # negative ARR
    "delta,Delta,delta.example,media,growth,10,five,2025-01-01,2026-01-01,Sam,Di,di@delta.example,,,\n"  # seats
    "eps,Eps,eps.example,media,growth,10,5,2025-01-01,2026-01-01,Sam,Ed,not-an-email,,,\n"  # email
    ",Nameless,x.example,media,growth,10,5,2025-01-01,2026-01-01,Sam,Fe,fe@x.example,,,\n"  # key
    "zeta,Zeta,zeta.example,media,growth,10,5,2025-01-01,2024-01-01,Sam,Gi,gi@zeta.example,,,\n"  # dates
    "eta,Eta,eta.example,media,growth,10,5,2025-01-01,2026-01-01,Sam,Hu,hu@eta.example,,,,extra\n"  # cells
)


def _import(services: Services, text: str):  # type: ignore[no-untyped-def]
    return import_customers(services.app, read_rows(io.StringIO(text)), actor="test", source_name="t.csv")


def test_import_twice_changes_nothing_the_second_time(services: Services) -> None:
    first = _import(services, HEADER + GOOD)
    head = services.app.last_position()
    second = _import(services, HEADER + GOOD)

    assert (first.created, first.updated, first.rejected) == (2, 0, [])
    assert (second.created, second.updated, second.unchanged) == (0, 0, 2)
    assert services.app.last_position() == head
    services.engine.catch_up()
    beta = services.profiles.get(services.app.resolve("beta"))
    assert beta is not None and beta["status"] == "churned" and beta["churn_reason"] == "price"
    acme = services.profiles.get(services.app.resolve("acme"))
    assert acme is not None and acme["zendesk_org_id"] == "901" and acme["arr"] == 42000


def test_changed_row_is_recorded_as_a_change(services: Services) -> None:
    _import(services, HEADER + GOOD)
    report = _import(services, HEADER + GOOD.replace(",42000,50,", ",48000,50,"))
    assert (report.updated, report.unchanged) == (1, 1)
    services.engine.catch_up()
    rows, _ = services.timeline.for_customer(services.app.resolve("acme"), types=["customer.contract_changed"])
    assert rows[0]["details"]["changes"] == [{"field": "arr", "old": 42000.0, "new": 48000.0}]


def test_bad_rows_are_reported_with_line_and_field_and_record_nothing(services: Services) -> None:
    report = _import(services, HEADER + GOOD + BAD)

    assert report.created == 2
    rejected = {(r.line, r.external_key, r.field) for r in report.rejected}
    assert rejected == {
        (4, "gamma", "arr"),
        (5, "delta", "seats"),
        (6, "eps", "contact_email"),
        (7, None, "external_key"),
        (8, "zeta", "renewal_date"),
        (9, "eta", "row"),
    }
    for key in ("gamma", "delta", "eps", "zeta", "eta"):
        assert customer_id_for(key) not in services.app.repository
    assert services.app.last_position() == report.last_position


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("external_key,name\nacme,Acme\n", "missing column(s) domain"),
        (HEADER.replace("churn_reason", "churn_reason,colour") + GOOD, "unknown column(s) colour"),
    ],
)
def test_bad_header_rejects_the_whole_file(services: Services, text: str, message: str) -> None:
    with pytest.raises(CsvFormatError, match=re.escape(message)):
        _import(services, text)
    assert services.app.last_position() == 0
