"""Latency of the core MCP tools ``register_client`` and ``get_client_overview``.

Measured through the official SDK client (``mcp.Client``) over two transports, each
against a fresh data directory: ``in-process`` (the server object built by
``build_server``) and ``stdio`` (``cs serve`` spawned as a subprocess). Calls are
sequential, one in flight at a time, each timed with ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult

from bench.runner import REPO_ROOT, percentiles, record
from events.settings import PostgresDsn, Settings
from mcp_server.server import build_server

WARMUP_CALLS = 20
SEED = 42
TRANSPORTS = ("in-process", "stdio")


class ToolCallFailed(RuntimeError):
    """A tool answered with an error or with something other than what was asked for."""


def register_args(tag: str, index: int) -> dict[str, Any]:
    """A distinct, valid registration; ``tag`` keeps keys unique across runs on one database."""
    return {
        "client_name": f"Bench Customer {index:05d}",
        "client_id": f"bench-{tag}-{index:05d}",
        "tier": ("starter", "growth", "enterprise")[index % 3],
        "arr": float(1_000 + 250 * index),
        "seats": 5 + index % 200,
        "renewal_date": (date(2027, 1, 1) + timedelta(days=index % 365)).isoformat(),
        "contact_name": f"Contact {index:05d}",
        "contact_email": f"contact{index:05d}@bench-{index:05d}.example.com",
    }


def _checked(tool: str, result: CallToolResult) -> dict[str, Any]:
    """The structured result of a successful call; raises on a tool error."""
    if result.is_error or not isinstance(result.structured_content, dict):
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise ToolCallFailed(f"{tool} failed: {text or result}")
    return result.structured_content


async def _register(client: Client, args: dict[str, Any]) -> float:
    start = time.perf_counter()
    result = await client.call_tool("register_client", args)
    elapsed = time.perf_counter() - start
    if _checked("register_client", result).get("status") != "created":
        raise ToolCallFailed(f"register_client did not create {args['client_id']}: {result.structured_content}")
    return elapsed


async def _overview(client: Client, client_id: str) -> float:
    start = time.perf_counter()
    result = await client.call_tool("get_client_overview", {"client_id": client_id})
    elapsed = time.perf_counter() - start
    if _checked("get_client_overview", result).get("client_id") != client_id:
        raise ToolCallFailed(f"get_client_overview answered for another customer than {client_id}")
    return elapsed


async def measure(target: MCPServer[Any] | StdioServerParameters, customers: int, overviews: int) -> dict[str, float]:
    """Connect, warm up, then time ``customers`` registrations and ``overviews`` reads."""
    tag = uuid.uuid4().hex[:8]
    connect_start = time.perf_counter()
    async with Client(target) as client:
        connected = time.perf_counter() - connect_start
        for i in range(WARMUP_CALLS):
            warm = register_args(f"{tag}-warm", i)
            await _register(client, warm)
            await _overview(client, warm["client_id"])

        ids = [register_args(tag, i)["client_id"] for i in range(customers)]
        started = time.perf_counter()
        register_times = [await _register(client, register_args(tag, i)) for i in range(customers)]
        register_wall = time.perf_counter() - started

        rng = random.Random(SEED)  # only chooses which customer to read
        started = time.perf_counter()
        overview_times = [await _overview(client, rng.choice(ids)) for _ in range(overviews)]
        overview_wall = time.perf_counter() - started

    reg, ovw = percentiles(register_times), percentiles(overview_times)
    return {
        "connect_ms": connected * 1000.0,
        **{f"register_{k}": v for k, v in reg.items()},
        "register_calls_per_s": customers / register_wall,
        **{f"overview_{k}": v for k, v in ovw.items()},
        "overview_calls_per_s": overviews / overview_wall,
    }


def stdio_params(data_dir: Path, database_url: str | None, master_key: str) -> StdioServerParameters:
    """``cs serve`` as a subprocess of this interpreter, configured only through CS_* variables."""
    env = {"CS_DATA_DIR": str(data_dir), "CS_MASTER_KEY": master_key, "PYTHONPATH": str(REPO_ROOT)}
    if database_url:
        env["CS_DATABASE_URL"] = database_url
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server.cli", "serve"], env=env, cwd=str(REPO_ROOT)
    )


async def run(customers: int, overviews: int, database_url: str | None) -> dict[str, dict[str, float]]:
    """Both transports, each on a fresh temporary data directory."""
    # One master key for the invocation: on PostgreSQL both servers share the key store.
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    figures: dict[str, dict[str, float]] = {}
    for transport in TRANSPORTS:
        with tempfile.TemporaryDirectory(prefix=f"cs-bench-{transport}-") as tmp:
            data_dir = Path(tmp)
            target: MCPServer[Any] | StdioServerParameters = (
                build_server(Settings(data_dir=data_dir, database_url=database_url, master_key=master_key))
                if transport == "in-process"
                else stdio_params(data_dir, database_url, master_key)
            )
            figures[transport] = await measure(target, customers, overviews)
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench core_tools", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=500, help="timed register_client calls (default 500)")
    parser.add_argument("--overviews", type=int, default=1000, help="timed get_client_overview calls (default 1000)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--database-url", help="postgresql://... for --backend postgres (default: $CS_DATABASE_URL)")
    args = parser.parse_args(argv)
    if args.customers < 1 or args.overviews < 1:
        parser.error("--customers and --overviews must be at least 1")
    if args.backend == "postgres":
        args.database_url = args.database_url or os.environ.get("CS_DATABASE_URL")
        if not args.database_url:
            parser.error("--backend postgres needs --database-url or CS_DATABASE_URL")
    elif args.database_url:
        parser.error("--database-url is only used with --backend postgres")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    figures = anyio.run(run, args.customers, args.overviews, args.database_url)
    params: dict[str, Any] = {
        "customers": args.customers,
        "overviews": args.overviews,
        "warmup_calls": WARMUP_CALLS,
        "seed": SEED,
        "backend": args.backend,
        "transports": list(TRANSPORTS),
    }
    if args.database_url:  # where, never the credentials
        dsn = PostgresDsn.parse(args.database_url)
        params["database"] = f"{dsn.host}:{dsn.port}/{dsn.dbname}"
    record("core_tools", figures, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
