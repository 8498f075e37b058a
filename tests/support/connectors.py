"""Shared helpers of the connector acceptance tests: vendor settings pointed at the fakes, a real
``VendorClient`` built the way ``cs sync`` builds it (with short back-off), the customers the
vendor records belong to, fault plans, bounded waits, and view rows to compare."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import pytest

from connectors.http import VendorClient
from events.commands import CommandMeta
from events.domain import customer_id_for
from events.personal import TOKEN_PREFIX
from events.settings import Settings
from mcp_server.services import Services
from tests.support.postgres import create_database, drop_database
from tests.support.vendors import IntercomFake, MixpanelFake, VendorFake, ZendeskFake

REGISTERED_AT = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)  # fixed, so two stores hold the same rows
CUSTOMERS: list[dict[str, Any]] = [
    {"external_key": "acme", "name": "Acme", "domain": "acme.example", "zendesk_org_id": "509974",
     "intercom_company_id": "ic-acme", "mixpanel_account_id": "acct-acme"},
    {"external_key": "globex", "name": "Globex", "domain": "globex.example", "zendesk_org_id": "600001",
     "intercom_company_id": "ic-globex", "mixpanel_account_id": "acct-globex"},
    {"external_key": "initech", "name": "Initech", "domain": "initech.example"},  # matched by e-mail domain only
]  # fmt: skip
ACME, GLOBEX, INITECH = (str(customer_id_for(c["external_key"])) for c in CUSTOMERS)
FAST_BACKOFF: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05}
PASS: dict[str, Any] = {"delay": 0.001}  # a "fault" that lets one request through unchanged
SIGNAL_TABLES = ("cs_tickets_v1", "cs_usage_days_v6", "cs_usage_users_v6", "cs_feature_usage_v6", "cs_usage_book_days_v6",
                 "cs_survey_responses_v1", "cs_email_events_v1")  # fmt: skip
WAIT_S = 10.0


def register_customers(svc: Services) -> None:
    meta = CommandMeta(actor="test", source="test.setup", occurred_at=REGISTERED_AT)
    for customer in CUSTOMERS:
        svc.app.register_customer(customer, meta)
    svc.engine.ensure_current()


def sync_settings(settings: Settings, fake: VendorFake) -> Settings:
    """``settings`` with the CS_* values ``cs sync`` needs for ``fake`` (its base URL, credentials)."""
    env: dict[str, str]
    if isinstance(fake, ZendeskFake):
        env = {"CS_ZENDESK_BASE_URL": fake.base_url, "CS_ZENDESK_EMAIL": fake.email,
               "CS_ZENDESK_API_TOKEN": fake.api_token}  # fmt: skip
    elif isinstance(fake, IntercomFake):
        env = {"CS_INTERCOM_BASE_URL": fake.base_url, "CS_INTERCOM_TOKEN": fake.token}
    elif isinstance(fake, MixpanelFake):
        env = {"CS_MIXPANEL_BASE_URL": fake.base_url, "CS_MIXPANEL_PROJECT_ID": fake.project_id,
               "CS_MIXPANEL_USERNAME": fake.username, "CS_MIXPANEL_SECRET": fake.secret}  # fmt: skip
    else:
        raise TypeError(f"no pull sync for {type(fake).__name__}")
    return replace(settings, vendor={**settings.vendor, **env})


def fast_client(vendor: str, settings: Settings) -> VendorClient:
    """The client ``cs sync`` builds (``cli_connectors.vendor_client``: same base URL, auth and
    headers), with millisecond back-off so a burst of 5xx does not slow the suite down."""
    env = settings.vendor
    if vendor == "zendesk":
        return VendorClient(vendor, env["CS_ZENDESK_BASE_URL"],
                            auth=(f"{env['CS_ZENDESK_EMAIL']}/token", env["CS_ZENDESK_API_TOKEN"]), **FAST_BACKOFF)  # fmt: skip
    if vendor == "intercom":
        return VendorClient(vendor, env["CS_INTERCOM_BASE_URL"], **FAST_BACKOFF,
                            headers={"Authorization": f"Bearer {env['CS_INTERCOM_TOKEN']}", "Intercom-Version": "2.11"})  # fmt: skip
    return VendorClient(vendor, env["CS_MIXPANEL_BASE_URL"],
                        auth=(env["CS_MIXPANEL_USERNAME"], env["CS_MIXPANEL_SECRET"]), **FAST_BACKOFF)  # fmt: skip


def queue_faults(fake: VendorFake, plan: Sequence[Mapping[str, Any]]) -> None:
    """One entry per coming request to the fake's main endpoint, in order (``PASS`` lets one through)."""
    for fault in plan:
        fake.fail_next(**fault)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` (every 10 ms) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.01)


def rows(svc: Services, table: str, *, exclude: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """Every row of ``table`` as sorted tuples of (column, value), without ``exclude`` columns;
    ``pd1:`` tokens are decrypted (their ciphertext is random by design, even in the JSON of
    timeline details), and PostgreSQL's NUMERIC sums compare as floats."""
    with svc.store.snapshot() as tx:
        found = tx.fetchall(f"SELECT * FROM {table}")
    out = []
    for row in found:
        owner = row.get("key_owner") or row.get("customer_id")
        item = []
        for column in sorted(row):
            if column in exclude:
                continue
            value = row[column]
            if isinstance(value, str) and value.startswith(TOKEN_PREFIX):
                value = svc.codec.decrypt(UUID(owner), value)
            if column == "details" and isinstance(value, str):
                value = _reveal_json(svc, UUID(owner), json.loads(value))
            if isinstance(value, Decimal):
                value = float(value)
            item.append((column, value))
        out.append(tuple(item))
    return sorted(out, key=repr)


def _reveal_json(svc: Services, owner: UUID, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reveal_json(svc, owner, v) for k, v in sorted(value.items())}
    if isinstance(value, str) and value.startswith(TOKEN_PREFIX):
        return svc.codec.decrypt(owner, value)
    return value


def sync_row(svc: Services, vendor: str) -> dict[str, Any]:
    with svc.store.snapshot() as tx:
        row = tx.fetchone("SELECT * FROM cs_sync_status_v1 WHERE vendor = ?", (vendor,))
    assert row is not None, f"no sync status for {vendor}"
    return row


@contextmanager
def another_store(settings: Settings, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A fresh, empty store on the same backend as ``settings``."""
    if settings.database_url is None:
        yield replace(settings, data_dir=tmp_path / "other-store")
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    url = create_database(admin_url)
    try:
        yield replace(settings, database_url=url, data_dir=tmp_path / "other-store")
    finally:
        drop_database(admin_url, url)
