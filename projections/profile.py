"""Customer profile view: one row per customer (profile, contract, status) and its contacts.

Contact names and e-mails stay encrypted in the view (``pd1:`` tokens) and are decrypted
only when read, so crypto-shredding a customer's key erases them here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any
from uuid import UUID

from events.domain import CONTRACT_FIELDS, PROFILE_FIELDS, Customer
from events.personal import ERASED, PersonalDataCodec
from projections.base import Projection, utc_iso
from projections.cursor import decode_cursor, encode_cursor
from projections.store import Tx, ViewStore

CUSTOMERS = "cs_customers_v1"
CONTACTS = "cs_contacts_v1"
FIELDS = (*PROFILE_FIELDS, *CONTRACT_FIELDS)
COLUMNS = ("customer_id", "external_key", *FIELDS, "status", "churned_on", "churn_reason", "registered_at", "updated_at", "last_position")


class CustomerProfileProjection(Projection):
    name = "customer_profile_v1"
    handles = (Customer.Event,)
    tables = (CUSTOMERS, CONTACTS)

    def schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {CUSTOMERS} (
                customer_id TEXT PRIMARY KEY, external_key TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
                domain TEXT, industry TEXT, tier TEXT, owner TEXT, zendesk_org_id TEXT,
                intercom_company_id TEXT, mixpanel_account_id TEXT, arr DOUBLE PRECISION, seats BIGINT,
                contract_start TEXT, renewal_date TEXT, status TEXT NOT NULL, churned_on TEXT,
                churn_reason TEXT, registered_at TEXT NOT NULL, updated_at TEXT NOT NULL,
                last_position BIGINT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{CUSTOMERS}_name ON {CUSTOMERS} (name, customer_id)",
            f"""CREATE TABLE IF NOT EXISTS {CONTACTS} (
                contact_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, name TEXT, email TEXT,
                role TEXT, is_primary BOOLEAN NOT NULL, added_at TEXT NOT NULL, position BIGINT NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS ix_{CONTACTS}_customer ON {CONTACTS} (customer_id)",
        ]

    def handle(self, tx: Tx, event: Any, position: int) -> None:
        if not isinstance(event, Customer.Event):
            return  # before any work: most of the log is usage and other signals
        cid = str(event.originator_id)
        at = utc_iso(event.occurred_at)
        if isinstance(event, Customer.Registered):
            values = [cid, event.external_key, *(event.profile.get(f) for f in FIELDS), "active", None, None, at, at, position]
            tx.insert(CUSTOMERS, COLUMNS, values)
            return
        if isinstance(event, (Customer.ProfileUpdated, Customer.ContractChanged)):
            for change in event.changes:
                column = change["field"]
                if column not in FIELDS:  # never interpolate anything but a known column
                    raise ValueError(f"unknown profile field {column!r} in {type(event).__qualname__}")
                tx.execute(f"UPDATE {CUSTOMERS} SET {column} = ? WHERE customer_id = ?", (change["new"], cid))
        elif isinstance(event, Customer.ContactAdded):
            if event.primary:
                tx.execute(f"UPDATE {CONTACTS} SET is_primary = ? WHERE customer_id = ?", (False, cid))
            tx.execute(
                f"INSERT INTO {CONTACTS} (contact_id, customer_id, name, email, role, is_primary, added_at, position)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.contact_id, cid, event.name, event.email, event.role, event.primary, at, position),
            )
        elif isinstance(event, Customer.ContactRemoved):
            tx.execute(f"DELETE FROM {CONTACTS} WHERE contact_id = ?", (event.contact_id,))
        elif isinstance(event, Customer.Churned):
            tx.execute(
                f"UPDATE {CUSTOMERS} SET status = 'churned', churned_on = ?, churn_reason = ? WHERE customer_id = ?",
                (event.churned_on, event.reason, cid),
            )
        else:
            return
        tx.execute(f"UPDATE {CUSTOMERS} SET updated_at = ?, last_position = ? WHERE customer_id = ?", (at, position, cid))

    def handle_batch(self, tx: Tx, items: Sequence[tuple[Any, int]]) -> None:
        """The rows ``handle`` leaves, folded in memory: the rows of the customers and contacts a
        batch touches read once, the events applied to them in order, the result written in a few
        statements (``handle`` is up to three statements per event, and every statement also flushes
        the rows other projections hold). Whatever ``handle`` would refuse (a customer or contact
        registered twice, an unknown profile field) raises here, and the runner finds the event."""
        events = [(event, position) for event, position in items if isinstance(event, Customer.Event)]
        if not events:
            return
        cids = sorted({str(event.originator_id) for event, _ in events})
        contact_ids = sorted({e.contact_id for e, _ in events if isinstance(e, (Customer.ContactAdded, Customer.ContactRemoved))})
        customers: dict[str, dict[str, Any]] = {}
        contacts: dict[str, dict[str, Any]] = {}  # contact_id -> row, as they stand
        for row in tx.fetchall_in(f"SELECT * FROM {CUSTOMERS} WHERE customer_id", cids):
            customers[row["customer_id"]] = row
        for row in [*tx.fetchall_in(f"SELECT * FROM {CONTACTS} WHERE customer_id", cids),
                    *tx.fetchall_in(f"SELECT * FROM {CONTACTS} WHERE contact_id", contact_ids)]:  # fmt: skip
            contacts[row["contact_id"]] = row
        stored_customers, stored_contacts = set(customers), set(contacts)
        changed: set[str] = set()  # customers to write
        touched: set[str] = set()  # contacts to write
        for event, position in events:
            cid = str(event.originator_id)
            at = utc_iso(event.occurred_at)
            customer = customers.get(cid)
            if isinstance(event, Customer.Registered):
                if customer is not None:
                    raise ValueError(f"customer {cid} registered twice")  # (the INSERT's primary key)
                values = [cid, event.external_key, *(event.profile.get(f) for f in FIELDS), "active", None, None, at, at, position]
                customers[cid] = dict(zip(COLUMNS, values, strict=True))
                changed.add(cid)
                continue
            if isinstance(event, (Customer.ProfileUpdated, Customer.ContractChanged)):
                for change in event.changes:
                    if change["field"] not in FIELDS:
                        raise ValueError(f"unknown profile field {change['field']!r} in {type(event).__qualname__}")
                    if customer is not None:
                        customer[change["field"]] = change["new"]
            elif isinstance(event, Customer.ContactAdded):
                if event.primary:
                    for contact in contacts.values():
                        if contact["customer_id"] == cid and contact["is_primary"]:
                            contact["is_primary"] = False
                            touched.add(contact["contact_id"])
                if event.contact_id in contacts:
                    raise ValueError(f"contact {event.contact_id} added twice")  # (the INSERT's primary key)
                contacts[event.contact_id] = {"contact_id": event.contact_id, "customer_id": cid, "name": event.name,
                                              "email": event.email, "role": event.role, "is_primary": event.primary,
                                              "added_at": at, "position": position}  # fmt: skip
                touched.add(event.contact_id)
            elif isinstance(event, Customer.ContactRemoved):
                contacts.pop(event.contact_id, None)
            elif isinstance(event, Customer.Churned):
                if customer is not None:
                    customer.update(status="churned", churned_on=event.churned_on, churn_reason=event.reason)
            else:
                continue
            if customer is not None:
                customer.update(updated_at=at, last_position=position)
                changed.add(cid)
        tx.execute_in(f"DELETE FROM {CONTACTS} WHERE contact_id", sorted(stored_contacts - set(contacts)))
        rows = [[customers[cid][c] for c in COLUMNS] for cid in sorted(changed)]
        tx.insert_many(CUSTOMERS, COLUMNS, [r for r in rows if r[0] not in stored_customers])
        tx.insert_many(CUSTOMERS, COLUMNS, [r for r in rows if r[0] in stored_customers],
                       f"ON CONFLICT (customer_id) DO UPDATE SET {_excluded(COLUMNS[1:])}")  # fmt: skip
        contact_rows = [[contacts[c][k] for k in CONTACT_COLUMNS] for c in sorted(touched) if c in contacts]
        tx.insert_many(CONTACTS, CONTACT_COLUMNS, [r for r in contact_rows if r[0] not in stored_contacts])
        tx.insert_many(CONTACTS, CONTACT_COLUMNS, [r for r in contact_rows if r[0] in stored_contacts],
                       f"ON CONFLICT (contact_id) DO UPDATE SET {_excluded(CONTACT_COLUMNS[1:])}")  # fmt: skip


CONTACT_COLUMNS = ("contact_id", "customer_id", "name", "email", "role", "is_primary", "added_at", "position")


def _excluded(columns: Sequence[str]) -> str:
    return ", ".join(f"{c} = excluded.{c}" for c in columns)


SORTS: dict[str, tuple[str, bool]] = {
    # sort name -> (SQL key expression, descending)
    "name": ("name", False),
    "arr": ("COALESCE(arr, -1)", True),
    "renewal_date": ("COALESCE(renewal_date, '9999-12-31')", False),
}


class CustomerProfileView:
    """Reads of the profile view; personal fields decrypted on the way out."""

    def __init__(self, store: ViewStore, codec: PersonalDataCodec) -> None:
        self.store = store
        self.codec = codec

    def get(self, customer_id: UUID) -> dict[str, Any] | None:
        with self.store.snapshot() as tx:
            row = tx.fetchone(f"SELECT * FROM {CUSTOMERS} WHERE customer_id = ?", (str(customer_id),))
            contacts = tx.fetchall(
                f"SELECT * FROM {CONTACTS} WHERE customer_id = ? ORDER BY position", (str(customer_id),)
            )
        if row is None:
            return None
        row["contacts"] = [self._contact(customer_id, c) for c in contacts]
        return row

    def _contact(self, customer_id: UUID, row: dict[str, Any]) -> dict[str, Any]:
        name = self.codec.decrypt(customer_id, row["name"])
        email = self.codec.decrypt(customer_id, row["email"])
        erased = (row["name"] and name is None) or (row["email"] and email is None)
        return {
            "contact_id": row["contact_id"],
            "name": ERASED if erased and row["name"] else name,
            "email": ERASED if erased and row["email"] else email,
            "role": row["role"],
            "primary": bool(row["is_primary"]),
        }

    def text_fields(self) -> list[dict[str, Any]]:
        """The distinct (tier, owner, industry) of the book: what a text filter can match."""
        with self.store.snapshot() as tx:
            return tx.fetchall(f"SELECT DISTINCT tier, owner, industry FROM {CUSTOMERS}")

    def list(
        self,
        *,
        tier: str | None = None,
        owner: str | None = None,
        industry: str | None = None,
        status: str | None = None,
        min_arr: float | None = None,
        max_arr: float | None = None,
        renewal_within_days: int | None = None,
        customer_ids: list[str] | None = None,
        today: date | None = None,
        sort: str = "name",
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        key_sql, desc = SORTS[sort]
        where, params = [], []  # type: ignore[var-annotated]
        for column, value in (("tier", tier), ("owner", owner), ("industry", industry), ("status", status)):
            if value is not None:
                where.append(f"LOWER({column}) = LOWER(?)")
                params.append(value)
        if min_arr is not None:
            where.append("arr >= ?")
            params.append(min_arr)
        if max_arr is not None:
            where.append("arr <= ?")
            params.append(max_arr)
        if renewal_within_days is not None:
            start = today or date.today()
            where.append("renewal_date >= ? AND renewal_date <= ?")
            params += [start.isoformat(), (start + timedelta(days=renewal_within_days)).isoformat()]
        if customer_ids is not None:  # an allow-list computed by the caller (e.g. segment members)
            if not customer_ids:
                return [], None
            where.append(f"customer_id IN ({', '.join('?' * len(customer_ids))})")
            params += list(customer_ids)
        after = decode_cursor(cursor, 2)
        if after is not None:
            op = "<" if desc else ">"
            where.append(f"({key_sql} {op} ? OR ({key_sql} = ? AND customer_id > ?))")
            params += [after[0], after[0], after[1]]
        order = f"{key_sql} {'DESC' if desc else 'ASC'}, customer_id ASC"
        sql = f"SELECT *, {key_sql} AS sort_key FROM {CUSTOMERS}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        params.append(limit + 1)
        with self.store.snapshot() as tx:
            rows = tx.fetchall(sql, params)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1]["sort_key"], rows[-1]["customer_id"])
        for row in rows:
            row.pop("sort_key")
        return rows, next_cursor

    def totals(self) -> dict[str, Any]:
        with self.store.snapshot() as tx:
            row = tx.fetchone(
                f"SELECT COUNT(*) AS customers, SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END) AS active,"
                f" SUM(CASE WHEN status = 'active' THEN arr ELSE 0 END) AS active_arr FROM {CUSTOMERS}"
            )
        assert row is not None
        return {"customers": int(row["customers"] or 0), "active": int(row["active"] or 0), "active_arr": float(row["active_arr"] or 0)}


class CustomerDirectory:
    """Source ids and e-mail domains of every customer, for matching vendor records.

    Loaded from the profile view in one query; call :meth:`refresh` after new customers."""

    SOURCE_FIELDS = ("external_key", "zendesk_org_id", "intercom_company_id", "mixpanel_account_id")

    def __init__(self, store: ViewStore) -> None:
        self.store = store
        self._sources: dict[tuple[str, str], UUID] = {}
        self._domains: dict[str, UUID | None] = {}
        self.refresh()

    def refresh(self) -> None:
        with self.store.snapshot() as tx:
            rows = tx.fetchall(f"SELECT customer_id, domain, {', '.join(self.SOURCE_FIELDS)} FROM {CUSTOMERS}")
        sources: dict[tuple[str, str], UUID] = {}
        domains: dict[str, UUID | None] = {}
        for row in rows:
            cid = UUID(row["customer_id"])
            for field in self.SOURCE_FIELDS:
                if row[field]:
                    sources[(field, str(row[field]).lower())] = cid
            if row["domain"]:
                domain = row["domain"].lower()
                domains[domain] = None if domain in domains and domains[domain] != cid else cid
        self._sources, self._domains = sources, domains

    def by_source(self, field: str, value: str) -> UUID | None:
        return self._sources.get((field, value.lower()))

    def by_domain(self, domain: str) -> UUID | None:
        return self._domains.get(domain.lower())
