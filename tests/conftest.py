"""Shared fixtures. Integration tests take ``settings`` and run once per backend:
SQLite in a temp dir, and PostgreSQL (a fresh database on the session's throwaway server,
see tests/support/postgres.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.settings import Settings
from mcp_server.services import Services, open_services
from tests.support.postgres import create_database, drop_database, postgres_server

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path / "data", master_key=MASTER_KEY)
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    url = create_database(admin_url)
    try:
        yield Settings(data_dir=tmp_path / "data", database_url=url, master_key=MASTER_KEY)
    finally:
        drop_database(admin_url, url)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    with open_services(settings) as svc:
        yield svc


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
