"""Pausing Python's cyclic garbage collector around bulk work (shared by the Mixpanel import's
chunks and the projections' rebuild).

Bulk work allocates hundreds of thousands to millions of containers (parsed lines, digest sets,
decoded events, rows) that reference counting frees and that form no cycles: the collections
they set off find nothing to free and cost 10-30% of the CPU. Cycles made meanwhile wait for the
next collection once the collector is back on.

The collector is one per process: pauses that overlap (a Mixpanel import in one thread of
`cs serve` while a projection's rebuild runs in another) are counted, and the collector comes
back on when the last of them ends, not when the first does (it would then collect in the
middle of the other's work, walking every object that work holds).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0  # pauses in progress, in any thread
_resume = False  # whether the collector goes back on when they end (it was on when the first began)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block, back to how it was after the last overlapping
    pause ends (also on failure); a collector someone else turned off stays off."""
    global _pauses, _resume
    with _lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()
