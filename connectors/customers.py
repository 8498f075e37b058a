"""`cs import customers FILE.csv`: the CRM/CSV export of accounts (DESIGN §13).

Each row is validated on its own and becomes one atomic command (an upsert keyed by
``external_key``): a bad row is rejected with its line, field and reason and records
nothing, while the other rows go in. Importing the same file again records nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from pydantic import ValidationError

from events.application import CommandResult, CustomerSuccess
from events.commands import ChurnCustomer, CommandMeta, RegisterCustomer
from events.errors import CSError, InvalidInputError

REQUIRED = (
    "external_key", "name", "domain", "industry", "tier", "arr", "seats", "contract_start",
    "renewal_date", "owner", "contact_name", "contact_email",
)  # fmt: skip
OPTIONAL = ("zendesk_org_id", "intercom_company_id", "mixpanel_account_id", "churned_at", "churn_reason")


class CsvFormatError(InvalidInputError):
    """The file as a whole is unusable (header). Nothing was imported."""


@dataclass(frozen=True)
class Rejected:
    line: int
    external_key: str | None
    field: str
    reason: str


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    last_position: int | None = None

    @property
    def rows(self) -> int:
        return self.created + self.updated + self.unchanged + len(self.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [r.__dict__ for r in self.rejected],
            "last_position": self.last_position,
        }


@dataclass(frozen=True)
class ParsedRow:
    line: int
    customer: RegisterCustomer
    churn: ChurnCustomer | None


def read_rows(stream: IO[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows keyed by column, with the file line they start on; the header is checked first."""
    reader = csv.DictReader(stream)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise CsvFormatError("header", "the file is empty; expected a header row: " + ",".join(REQUIRED))
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CsvFormatError("header", f"missing column(s) {', '.join(missing)}; expected: {','.join(REQUIRED)}")
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise CsvFormatError(
            "header", f"unknown column(s) {', '.join(unknown)}; optional columns are: {','.join(OPTIONAL)}"
        )
    reader.fieldnames = header
    line = reader.line_num
    for raw in reader:
        yield line + 1, raw
        line = reader.line_num


def parse_row(line: int, raw: dict[str, Any]) -> ParsedRow:
    """Validate one row; raise InvalidInputError naming the column."""
    if None in raw:  # more cells than columns
        raise InvalidInputError("row", f"has {len(raw) - 1 + len(raw[None])} cells for {len(raw) - 1} columns")
    cells = {k: (v.strip() if isinstance(v, str) else v) or None for k, v in raw.items()}
    for column in ("external_key", "name"):
        if not cells.get(column):
            raise InvalidInputError(column, "required: every row needs an external_key and a name")
    churned_at, churn_reason = cells.pop("churned_at", None), cells.pop("churn_reason", None)
    try:
        customer = RegisterCustomer.model_validate(cells)
        churn = ChurnCustomer.model_validate({"churned_on": churned_at, "reason": churn_reason}) if churned_at else None
    except ValidationError as exc:
        error = InvalidInputError.from_validation(exc)
        if error.field == "churned_on":
            raise InvalidInputError("churned_at", str(error).split(": ", 1)[1]) from None
        raise error from None
    if churn_reason and not churned_at:
        raise InvalidInputError("churn_reason", "given without churned_at; add the churn date")
    return ParsedRow(line, customer, churn)


def import_customers(
    app: CustomerSuccess,
    rows: Iterable[tuple[int, dict[str, str]]],
    *,
    actor: str,
    source_name: str,
    on_row: Callable[[], None] | None = None,
) -> ImportReport:
    """Upsert every valid row; report each rejected one. Never raises for a bad row."""
    report = ImportReport()
    for line, raw in rows:
        key = (raw.get("external_key") or "").strip() or None
        try:
            parsed = parse_row(line, raw)
            meta = CommandMeta(actor=actor, source="csv.customers", source_id=f"{source_name}:{line}")
            result: CommandResult = app.import_customer(parsed.customer, parsed.churn, meta)
        except CSError as exc:
            field_name = getattr(exc, "field", "row")
            reason = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
            report.rejected.append(Rejected(line, key, field_name, reason))
        else:
            setattr(report, result.status, getattr(report, result.status) + 1)
            if result.position is not None:
                report.last_position = result.position
        if on_row:
            on_row()
    return report
