"""A worker process that parses the chunks of a large Mixpanel import while the calling
process rolls up and commits the previous chunk (the import's two halves on two cores).

One pool of one worker per process, started on first use (``spawn``: safe next to the
projection threads of `cs serve` / `cs worker`, which ``fork`` is not) and kept for the life
of the process, so only the first large import of a process pays for the start; the pool is
shut down at interpreter exit. At most two chunks are in flight, so memory stays bounded.
If the worker cannot start or dies, the chunks it had, and all later ones in this process,
are parsed in the calling process instead (same results, one core).
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.util
import pickle
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from connectors.mixpanel import ParsedChunk, parse_chunk, parse_text
from events.collector import collector_paused

log = structlog.get_logger(__name__)

Chunk = str | list[str | bytes]  # lines joined (from a text stream) or as a list

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_broken = False  # the worker could not start or died: parse in the calling process from then on


def _parser_pool() -> ProcessPoolExecutor | None:
    global _pool
    with _lock:
        if _pool is None and not _broken and not multiprocessing.current_process().daemon:  # may not have children
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            # Stopped before multiprocessing joins the children at exit: in a process that is itself
            # a multiprocessing child, the executor's own exit hook would run after that join (never).
            multiprocessing.util.Finalize(None, _shutdown, exitpriority=100)
        return _pool


def _shutdown() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _give_up(pool: ProcessPoolExecutor, error: BaseException) -> None:
    """Not again in this process: a worker that cannot start (e.g. a script without a
    ``__main__`` guard, which ``spawn`` re-runs) would fail the same way every time."""
    global _pool, _broken
    with _lock:
        if not _broken:
            log.warning("mixpanel.parser_worker_unavailable", error=type(error).__name__)
        _broken = True
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _parse(chunk: Chunk, first_number: int, account_property: str) -> ParsedChunk:
    with collector_paused():
        return _parse_lines(chunk, first_number, account_property)


def _parse_pickled(chunk: Chunk, first_number: int, account_property: str) -> bytes:
    """:func:`_parse` in the worker, pickled there with the collector still off (the executor would
    pickle the result after the function returned, with it on: a collection every few hundred of
    the objects it walks, each walking every object the worker holds); unpickled by the caller,
    also with the collector off."""
    with collector_paused():
        return pickle.dumps(_parse_lines(chunk, first_number, account_property), pickle.HIGHEST_PROTOCOL)


def _parse_lines(chunk: Chunk, first_number: int, account_property: str) -> ParsedChunk:
    if isinstance(chunk, str) and "\r" not in chunk:  # str.split: a tenth of the cost of StringIO's lines
        return parse_text(chunk, first_number, account_property)
    return parse_chunk(chunk_lines(chunk), first_number, account_property)


def parsed_chunks(source: Iterable[str | bytes], size: int, account_property: str) -> Iterator[tuple[ParsedChunk, bool]]:
    """``parse_chunk`` of each chunk of ``size`` lines of ``source`` (numbered from 1), in
    order, each with whether it is the last. A single chunk is parsed here (not worth a
    process); from two on, the worker parses chunk N+1 while the caller handles chunk N."""
    chunks = line_chunks(source, size)
    current = next(chunks, None)
    if current is None:
        return
    following = next(chunks, None)
    if following is None:
        yield _parse(current[0], 1, account_property), True
        return
    pool = _parser_pool()
    inflight: deque[tuple[Future[bytes] | None, Chunk, int]] = deque()
    number = 1

    def submit(chunk: tuple[Chunk, int]) -> None:
        nonlocal number, pool
        lines, count = chunk
        future: Future[bytes] | None = None
        if pool is not None:
            try:
                future = pool.submit(_parse_pickled, lines, number, account_property)
            except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: at interpreter shutdown
                _give_up(pool, exc)
                pool = None
        inflight.append((future, lines, number))
        number += count

    submit(current)
    submit(following)
    while inflight:
        future, lines, first = inflight.popleft()
        parsed: ParsedChunk | None = None
        if future is not None:
            try:
                pickled = future.result()
                with collector_paused():
                    parsed = pickle.loads(pickled)
                del pickled
            except BrokenProcessPool as exc:
                if pool is not None:
                    _give_up(pool, exc)
                    pool = None
        if parsed is None:
            parsed = _parse(lines, first, account_property)
        del lines
        following = next(chunks, None)  # read on while the worker parses the chunk in flight
        if following is not None:
            submit(following)
        yield parsed, not inflight


# ------------------------------------------------------------------------- reading chunks
BLOCK = 1 << 22  # characters read from a text stream at a time
_LINE_END = re.compile(r"\r\n|\r|\n")


def line_chunks(source: Iterable[str | bytes], size: int) -> Iterator[tuple[Chunk, int]]:
    """``source`` in chunks of ``size`` lines (the last may be shorter), each with its count.

    From a text stream a chunk is one string, read in large blocks and split into lines by
    :func:`chunk_lines` where it is parsed (line by line reading was a large share of the
    importing process's time). Lines end as in a stream opened with ``newline=""`` (as
    `cs import` opens files: ``\\n``, ``\\r\\n`` or a lone ``\\r``; a stream that translates
    newlines has only ``\\n``). Other iterables give lists of their lines."""
    if not isinstance(source, io.TextIOBase):
        iterator = iter(source)
        while chunk := list(islice(iterator, size)):
            yield chunk, len(chunk)
        return
    parts: list[str] = []
    have = 0  # lines in parts
    carry = ""  # an unfinished last line
    while True:
        block = source.read(BLOCK)
        text = carry + block if carry else block
        if block:
            end = len(text) - 1 if text.endswith("\r") else len(text)  # a final \r may be half of \r\n
            cut = max(text.rfind("\n", 0, end), text.rfind("\r", 0, end)) + 1
            text, carry = text[:cut], text[cut:]
            count = _count_lines(text)
        else:  # the end: what is left is the last line(s), the very last maybe without an end
            carry = ""
            count = _count_lines(text) + (1 if text and not text.endswith(("\n", "\r")) else 0)
        while have + count >= size:
            cut = _after_lines(text, size - have)
            parts.append(text[:cut])
            yield "".join(parts), size
            parts, have, text = [], 0, text[cut:]
            count = _count_lines(text) + (1 if not block and text and not text.endswith(("\n", "\r")) else 0)
        if text:
            parts.append(text)
            have += count
        if not block:
            if parts:
                yield "".join(parts), have
            return


def _count_lines(text: str) -> int:
    """Line ends in ``text`` (``\\r\\n`` is one)."""
    if "\r" not in text:
        return text.count("\n")
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _after_lines(text: str, n: int) -> int:
    """The index just after the ``n``-th line of ``text`` (its end if it has fewer line ends)."""
    if "\r" in text:
        for i, found in enumerate(_LINE_END.finditer(text), start=1):
            if i == n:
                return found.end()
        return len(text)
    position = -1
    for _ in range(n):
        position = text.find("\n", position + 1)
        if position < 0:
            return len(text)
    return position + 1


def chunk_lines(chunk: Chunk) -> Iterable[str | bytes]:
    """The lines of a chunk from :func:`line_chunks`, with their line ends."""
    return io.StringIO(chunk, newline="") if isinstance(chunk, str) else chunk
