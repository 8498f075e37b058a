"""Configuration, read from the environment in exactly one place.

Every entry point builds a :class:`Settings` with :meth:`Settings.from_env` and passes it
down explicitly; nothing else in the code base reads ``os.environ`` for ``CS_*`` values.
The defaults run on a laptop with no server: SQLite files under ``./data``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit


class ConfigurationError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class PostgresDsn:
    """The parts of a ``postgresql://user:pass@host:port/db`` URL."""

    host: str
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def parse(cls, url: str, variable: str = "CS_DATABASE_URL") -> PostgresDsn:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"{variable} must start with postgresql:// (got scheme {parts.scheme!r})"
            )
        dbname = parts.path.lstrip("/")
        if not parts.hostname or not dbname:
            raise ConfigurationError(
                f"{variable} must name a host and a database: postgresql://user:pass@host:5432/db"
            )
        if parts.hostname.startswith("/"):
            raise ConfigurationError(f"{variable} must use TCP (host:port), not a Unix socket")
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=unquote(dbname),
        )

    def conninfo(self) -> str:
        """A libpq keyword string (keeps the password out of URLs in tracebacks)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.dbname
        )


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with laptop-friendly defaults (DESIGN.md §13)."""

    data_dir: Path = Path("./data")
    database_url: str | None = None
    master_key: str | None = None
    kafka_bootstrap: str | None = None
    kafka_topic: str = "cs.events"
    http_token: str | None = None
    vendor: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        database_url = env.get("CS_DATABASE_URL") or None
        if database_url:
            PostgresDsn.parse(database_url)  # fail at start-up, naming the variable
        return cls(
            data_dir=Path(env.get("CS_DATA_DIR") or "./data"),
            database_url=database_url,
            master_key=env.get("CS_MASTER_KEY") or None,
            kafka_bootstrap=env.get("CS_KAFKA_BOOTSTRAP") or None,
            kafka_topic=env.get("CS_KAFKA_TOPIC") or "cs.events",
            http_token=env.get("CS_HTTP_TOKEN") or None,
            vendor={
                k: v
                for k, v in env.items()
                if k.startswith(("CS_ZENDESK_", "CS_INTERCOM_", "CS_MIXPANEL_", "CS_SENDGRID_"))
            },
        )

    @property
    def backend(self) -> str:
        return "postgres" if self.database_url else "sqlite"

    @property
    def postgres(self) -> PostgresDsn:
        if not self.database_url:
            raise ConfigurationError("CS_DATABASE_URL is not set")
        return PostgresDsn.parse(self.database_url)

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    @property
    def events_sqlite_path(self) -> Path:
        return self.data_dir / "events.sqlite"

    @property
    def views_sqlite_path(self) -> Path:
        return self.data_dir / "views.sqlite"

    @property
    def keys_sqlite_path(self) -> Path:
        return self.data_dir / "keys.sqlite"

    def eventsourcing_env(self) -> dict[str, str]:
        """The environment handed to the eventsourcing Application (explicit, complete)."""
        if self.database_url:
            dsn = self.postgres
            return {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                # Appends without psycopg's pipeline mode, which hangs on large appends (see module).
                "APPLICATION_RECORDER_TOPIC": "events.pgrecorder:UnpipelinedPostgresApplicationRecorder",
                "POSTGRES_HOST": dsn.host,
                "POSTGRES_PORT": str(dsn.port),
                "POSTGRES_USER": dsn.user,
                "POSTGRES_PASSWORD": dsn.password,
                "POSTGRES_DBNAME": dsn.dbname,
                "POSTGRES_POOL_SIZE": "5",
                "POSTGRES_MAX_OVERFLOW": "5",
                "POSTGRES_CONNECT_TIMEOUT": "10",
                "POSTGRES_LOCK_TIMEOUT": "10",
                "CREATE_TABLE": "y",
                "AGGREGATE_CACHE_MAXSIZE": "1000",
            }
        self.ensure_data_dir()
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(self.events_sqlite_path),
            "SQLITE_LOCK_TIMEOUT": "10",
            "CREATE_TABLE": "y",
            "AGGREGATE_CACHE_MAXSIZE": "1000",
        }
