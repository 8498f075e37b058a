"""`cs`: the command line. The composition root of every entry point (DESIGN §11).

Exit codes: 0 success, 2 bad input (with a one-line reason), 1 any other failure.
Human output by default (rich tables); ``--json`` prints one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import date
from importlib import resources
from pathlib import Path
from typing import IO, Any

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from connectors.customers import CsvFormatError, ImportReport, import_customers, read_rows
from connectors.service import FILE_SOURCES
from events.errors import CSError
from events.settings import ConfigurationError, Settings
from mcp_server import cli_connectors, dashboard, sample_data
from mcp_server.logs import configure_logging
from mcp_server.services import Services, open_services

log = structlog.get_logger(__name__)
IMPORT_SOURCES = ("customers", *FILE_SOURCES)


class BadInput(Exception):
    """Exit 2 with this one-line reason."""


def _console() -> Console:
    """Rich console; piped output gets a fixed width wide enough for the tables."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def _progress(console: Console, enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )  # fmt: skip


def _count_lines(path: Path) -> int | None:
    with path.open("rb") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


def _check_source(source: str) -> None:
    if source not in IMPORT_SOURCES:
        raise BadInput(f"SOURCE: unknown import source {source!r}; available: {', '.join(IMPORT_SOURCES)}")


def _run_import(svc: Services, source: str, stream: IO[str], name: str, total: int | None, show: bool) -> ImportReport:
    _check_source(source)
    console = _console()
    with _progress(console, show) as progress:
        task = progress.add_task(f"importing {name}", total=total) if progress else None
        report = import_customers(
            svc.app,
            read_rows(stream),
            actor="cli",
            source_name=name,
            on_row=(lambda: progress.advance(task)) if progress else None,
        )
    return report


def _print_import(report: ImportReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console = _console()
    console.print(
        f"{report.rows} rows: [green]{report.created} created[/], {report.updated} updated, "
        f"{report.unchanged} unchanged, [red]{len(report.rejected)} rejected[/]"
    )
    if report.rejected:
        from rich.table import Table

        table = Table("line", "external_key", "field", "reason", title="Rejected rows (nothing recorded for them)")
        for r in report.rejected:
            table.add_row(str(r.line), r.external_key or "", r.field, r.reason)
        console.print(table)


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    _check_source(args.source)
    if args.file == "-":
        stream, name, total = sys.stdin, "stdin", None
    else:
        path = Path(args.file)
        if not path.is_file():
            raise BadInput(f"FILE: {args.file} does not exist or is not a file")
        stream, name, total = path.open(newline="", encoding="utf-8-sig"), path.name, _count_lines(path)
    with stream, open_services(settings) as svc:
        if args.source != "customers":
            batch = cli_connectors.import_signals(svc, args.source, stream, name, None if args.json else _console())
            cli_connectors.print_batch(_console(), batch, args.json, f"{args.source} {name}")
            return 2 if batch.rejected else 0
        report = _run_import(svc, args.source, stream, name, total, show=not args.json)
    _print_import(report, args.json)
    return 2 if report.rejected else 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The sample book through the same import paths a user runs: customers (their dates moved to
    the day of the first demo into this store, see sample_data.sample_shift), then each vendor's
    files (generated for today into DATA_DIR/demo), then the dashboard."""
    written = (resources.files("mcp_server") / "sample" / "customers.csv").read_text(encoding="utf-8")
    console = None if args.json else _console()
    signals: dict[str, Any] = {}
    today = date.today()
    with open_services(settings) as svc:
        shift = sample_data.sample_shift(svc.app, written, today)
        customers_csv = sample_data.shift_dates(written, shift)
        report = _run_import(svc, "customers", io.StringIO(customers_csv), "customers.csv", None, show=not args.json)
        if console:
            _print_import(report, as_json=False)
        files = sample_data.write_sample_files(customers_csv, settings.data_dir / "demo", today)
        for source, path in files.items():
            with path.open(encoding="utf-8", newline="") as stream:
                batch = cli_connectors.import_signals(svc, source, stream, path.name, console)
            signals[source] = batch.as_dict()
            if console:
                cli_connectors.print_batch(console, batch, False, f"{source} {path.name}")
        processed = svc.engine.ensure_current()
        data = dashboard.collect(svc, today)
    if args.json:
        print(json.dumps({"import": report.as_dict(), "signals": signals, "dashboard": data, "log_position": processed,
                          "sample_dates_moved_by_days": shift}, default=str))  # fmt: skip
        return 0
    dashboard.render(_console(), data, settings)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.http:
        import uvicorn

        from mcp_server.http import build_http_app

        app = build_http_app(settings, host=args.host)
        configure_logging(args.log_level)
        log.info("serve.start", transport="http", host=args.host, port=args.port, backend=settings.backend)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
        return 0
    from mcp_server.server import build_server
    from mcp_server.stdio import run_stdio

    server = build_server(settings)
    configure_logging(args.log_level)  # after the SDK set up its own handlers: JSON to stderr
    log.info("serve.start", transport="stdio", backend=settings.backend, data_dir=str(settings.data_dir))
    run_stdio(server)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from mcp_server.worker import run_worker

    heartbeat = settings.data_dir / "worker.heartbeat"
    with open_services(settings) as svc:
        run_worker(svc, sync_every=args.sync_every or None, heartbeat=heartbeat, max_seconds=args.max_seconds)
    return 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    with open_services(settings, run_projections=False) as svc:
        names = [args.projection] if args.projection else None
        if args.projection and args.projection not in svc.engine.runners:
            raise BadInput(f"PROJECTION: unknown {args.projection!r}; available: {', '.join(svc.engine.runners)}")
        from mcp_server.cli_governance import rebuild_guard  # the audit chain is never re-linked blindly

        names, skipped = rebuild_guard(svc, names)
        head = svc.app.last_position()
        console = _console()
        with _progress(console, not args.json) as progress:
            total = head * len(names or svc.engine.runners)
            task = progress.add_task("rebuilding", total=total) if progress else None
            processed = svc.engine.rebuild(names, (lambda n: progress.advance(task, n)) if progress else None)
        status = [s for s in svc.engine.status() if s["projection"] in names]
    if args.json:
        print(json.dumps({"events_processed": processed, "projections": status, "skipped": skipped}))
    else:
        console.print(f"rebuilt {', '.join(s['projection'] for s in status if not names or s['projection'] in names)}"
                      f" from {head} events")  # fmt: skip
        for skip in skipped:
            console.print(f"[yellow]skipped {skip['projection']}[/]: {skip['reason']}")
    return 0


def cmd_tools(args: argparse.Namespace, settings: Settings) -> int:
    import anyio

    from mcp_server.server import build_server

    tools = anyio.run(build_server(settings).list_tools)
    if args.json:
        print(json.dumps([{"name": t.name, "description": t.description} for t in tools]))
        return 0
    if args.markdown:
        sys.stdout.write(dashboard.tools_markdown(tools))
        return 0
    from rich.table import Table

    table = Table("tool", "kind", "what it does", title=f"{len(tools)} tools")
    for t in tools:
        kind = "read" if t.annotations and t.annotations.read_only_hint else "command"
        table.add_row(t.name, kind, (t.description or "").split("\n")[0])
    _console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cs", description="Customer-success backend (event-sourced, MCP tools)")
    parser.add_argument("--log-level", default="WARNING", help="stderr log level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="load the bundled sample book into the embedded store and show a dashboard")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the MCP server on stdio, or HTTP with --http (keeps views current)")
    serve.add_argument("--http", action="store_true", help="MCP at /mcp, webhooks, /healthz, /metrics")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (non-loopback needs CS_HTTP_TOKEN)")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run projections, the Kafka publisher and scheduled jobs (health history, syncs)")
    worker.add_argument("--sync-every", type=float, default=900.0, help="seconds between vendor syncs (0: never)")
    worker.add_argument("--max-seconds", type=float, default=None, help=argparse.SUPPRESS)  # tests: a bounded run
    worker.set_defaults(func=cmd_worker)

    imp = sub.add_parser("import", help="import a file: cs import customers FILE.csv (or - for stdin)")
    imp.add_argument("source", metavar="SOURCE", help=f"one of: {', '.join(IMPORT_SOURCES)}")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=cmd_import)

    rebuild = sub.add_parser("rebuild", help="drop and rebuild projections from the event log")
    rebuild.add_argument("projection", nargs="?", metavar="PROJECTION")
    rebuild.add_argument("--json", action="store_true")
    rebuild.set_defaults(func=cmd_rebuild)

    tools = sub.add_parser("tools", help="list the MCP tools from the live registry")
    tools.add_argument("--json", action="store_true")
    tools.add_argument("--markdown", action="store_true", help="the docs/tools.md page")
    tools.set_defaults(func=cmd_tools)

    cli_connectors.add_commands(sub)

    from mcp_server import cli_governance  # verify, replay (imported here: it imports this module)

    cli_governance.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings))
    except (BadInput, CsvFormatError, ConfigurationError, CSError) as exc:
        print(f"cs {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the operator, the traceback in the JSON log
        log.exception("cli.failed", command=args.command)
        print(f"cs {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
