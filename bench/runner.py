"""The shared benchmark runner: latency percentiles, a readable table, a JSON record.

Every benchmark module computes its figures, then calls :func:`record`, which prints them
and writes ``bench/results/<name>-<UTC timestamp>.json`` plus ``<name>-latest.json`` with
the machine it ran on and the parameters it ran with, so runs can be compared later.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time (every thread) of a process (Linux /proc), or of this one; NaN
    where unknown."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = stat_fields(pid)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def postmaster_pid(database_url: str) -> int | None:
    """The PostgreSQL server's postmaster (the parent of the backend serving a connection), or
    None when it is not a process of this machine we can see."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:  # read while the backend is alive
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            return int(stat_fields(int(row[0]))[1]) if row else None
        except (OSError, ValueError, IndexError):
            return None


def tree_cpu_seconds(root: int | None) -> float:
    """User + system CPU time of a PostgreSQL server: the postmaster, the children it has
    reaped (backends of closed connections: its cutime + cstime) and its live children
    (backends, background writer, WAL writer, autovacuum...). NaN where unknown."""
    if root is None:
        return float("nan")
    try:
        fields = stat_fields(root)
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        for task in Path(f"/proc/{root}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    child_fields = stat_fields(int(child))
                except OSError:  # exited meanwhile: counted in the postmaster's cutime once reaped
                    continue
                ticks += int(child_fields[11]) + int(child_fields[12])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return ticks / os.sysconf("SC_CLK_TCK")


def percentiles(samples_seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of latency samples (seconds in), in milliseconds."""
    if not samples_seconds:
        raise ValueError("percentiles() needs at least one sample")
    ms = [s * 1000.0 for s in samples_seconds]
    # quantiles() needs two points; a single sample is its own every percentile.
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "p50_ms": cuts[49],
        "p90_ms": cuts[89],
        "p99_ms": cuts[98],
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
    }


def add_backend_args(parser: argparse.ArgumentParser, *, default: str) -> None:
    """``--backend sqlite|postgres|both`` and ``--database-url`` (a server to create scratch
    databases on; default $CS_DATABASE_URL, else a throwaway embedded server)."""
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default=default)
    parser.add_argument("--database-url", help="postgresql://... server to create a scratch database on "
                        "(default: $CS_DATABASE_URL, else a throwaway embedded server)")  # fmt: skip


def backends_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The backends asked for; also settles ``args.database_url`` from the environment."""
    args.database_url = args.database_url or os.environ.get("CS_DATABASE_URL") or None
    return ("sqlite", "postgres") if args.backend == "both" else (args.backend,)


def _git(*args: str) -> str | None:
    """The output of a git command in the repository, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """Where the figures were measured: platform, Python, CPU count, commit (and uncommitted changes)."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git("rev-parse", "HEAD") or None,
        "git_dirty": None if (status := _git("status", "--porcelain")) is None else bool(status),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def format_table(figures: Mapping[str, Any]) -> str:
    """Figures as aligned text: a metric-by-group grid when values are dicts, else two columns."""
    groups = [k for k, v in figures.items() if isinstance(v, Mapping)]
    flat = [k for k in figures if k not in groups]
    rows: list[list[str]] = []
    if groups:
        metrics = list(dict.fromkeys(m for g in groups for m in figures[g]))
        rows.append(["metric", *groups])
        rows.extend([m, *(_cell(figures[g].get(m, "")) for g in groups)] for m in metrics)
    if flat:
        if not rows:
            rows.append(["metric", "value"])
        rows.extend([k, _cell(figures[k])] + [""] * (len(rows[0]) - 2) for k in flat)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def record(name: str, figures: dict[str, Any], params: dict[str, Any]) -> Path:
    """Print ``figures`` as a table and write them (with machine info and ``params``) as JSON.

    Returns the path of the timestamped file; ``<name>-latest.json`` is overwritten too."""
    now = datetime.now(timezone.utc)
    document = {
        "benchmark": name,
        "recorded_at": now.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": params,
        "figures": figures,
    }
    print(f"\n{name}  ({document['recorded_at']}, params: {json.dumps(params, default=str)})")
    print(format_table(figures))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, default=str) + "\n"
    path = RESULTS_DIR / f"{name}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text, encoding="utf-8")
    (RESULTS_DIR / f"{name}-latest.json").write_text(text, encoding="utf-8")
    print(f"written {path.relative_to(REPO_ROOT)}")
    return path
