"""``python -m bench``: run every benchmark; ``python -m bench NAME [ARGS...]`` runs one.

A benchmark is any module of this package that defines ``main(argv) -> int``; the
arguments after its name are handed to it unchanged. ``python -m bench --list`` lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

NOT_BENCHMARKS = {"runner"}

Main = Callable[[Sequence[str] | None], int]


def benchmarks() -> dict[str, Main]:
    """Every benchmark module's ``main``, by module name, in name order."""
    found: dict[str, Main] = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in NOT_BENCHMARKS:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        entry = getattr(module, "main", None)
        if callable(entry):
            found[info.name] = entry
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    available = benchmarks()
    if args and args[0] in ("-h", "--help", "--list"):
        print("benchmarks: " + ", ".join(available))
        print("usage: python -m bench [NAME [ARGS...]]   (no NAME: run all with defaults)")
        return 0
    if not args:
        failed = [name for name, entry in available.items() if entry([]) != 0]
        if failed:
            print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    name, rest = args[0], args[1:]
    if name not in available:
        print(f"unknown benchmark {name!r}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    return available[name](rest)


if __name__ == "__main__":
    sys.exit(main())
