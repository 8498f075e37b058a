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
from multiprocessing.shared_memory import SharedMemory
from typing import NamedTuple

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


def _parse_pickled(chunk: Chunk | SharedRef, first_number: int, account_property: str) -> bytes:
    """:func:`_parse` in the worker, pickled there with the collector still off (the executor would
    pickle the result after the function returned, with it on: a collection every few hundred of
    the objects it walks, each walking every object the worker holds); unpickled by the caller,
    also with the collector off."""
    text = _shared_text(chunk) if isinstance(chunk, SharedRef) else chunk
    with collector_paused():
        return pickle.dumps(_parse_lines(text, first_number, account_property), pickle.HIGHEST_PROTOCOL)


class SharedRef(NamedTuple):
    """Where a chunk's text waits for the worker: a POSIX shared memory segment and its length."""

    name: str
    size: int


class SharedSegments:
    """Chunks of text handed to the worker through shared memory: the importing process writes a
    chunk's UTF-8 into a segment (a few ms for a 20 MB chunk) and only the segment's name crosses
    the executor's pipe; pickling the text there, pushing it through the pipe and unpickling it
    cost the worker about 0.6 us per raw event and the importing process about as much. The
    segments (one per chunk in flight) are reused from chunk to chunk: a new segment's pages
    are allocated and zeroed on first write, which costs as much as the pipe. All are removed
    when the import's chunks are done, or given up."""

    def __init__(self) -> None:
        self._free: list[SharedMemory] = []
        self._made: list[SharedMemory] = []
        self._unavailable = False

    def put(self, chunk: Chunk) -> tuple[SharedRef, SharedMemory] | None:
        """The chunk in a segment; None for a list of lines, or if no segment can be made."""
        if not isinstance(chunk, str) or self._unavailable:
            return None
        data = chunk.encode("utf-8", "surrogatepass")  # any str, as it was
        memory = next((m for m in self._free if m.size >= len(data)), None)
        if memory is None:
            try:
                memory = SharedMemory(create=True, size=max(1, len(data) + len(data) // 4))  # room for longer chunks
            except OSError as exc:  # e.g. no /dev/shm: the text goes through the pipe
                log.info("mixpanel.shared_memory_unavailable", error=type(exc).__name__)
                self._unavailable = True
                return None
            self._made.append(memory)
        else:
            self._free.remove(memory)
        memory.buf[: len(data)] = data
        return SharedRef(memory.name, len(data)), memory

    def give_back(self, memory: SharedMemory) -> None:
        self._free.append(memory)

    def close(self) -> None:
        made, self._made, self._free = self._made, [], []
        for memory in made:
            memory.close()
            memory.unlink()


def _shared_text(ref: SharedRef) -> str:
    memory = SharedMemory(name=ref.name)
    try:
        with memory.buf[: ref.size] as view:
            return str(view, "utf-8", "surrogatepass")
    finally:
        memory.close()


def _parse_lines(chunk: Chunk, first_number: int, account_property: str) -> ParsedChunk:
    if isinstance(chunk, str) and "\r" not in chunk:  # str.split: a tenth of the cost of StringIO's lines
        return parse_text(chunk, first_number, account_property)
    return parse_chunk(chunk_lines(chunk), first_number, account_property)


def parsed_chunks(source: Iterable[str | bytes], size: int, account_property: str) -> Iterator[tuple[ParsedChunk, bool]]:
    """``parse_chunk`` of each chunk of ``size`` lines of ``source`` (numbered from 1), in
    order, each with whether it is the last. A single chunk is parsed here (not worth a
    process); from two on, the first is parsed here while the worker parses the second, and
    then the worker parses chunk N+1 while the caller handles chunk N."""
    chunks = line_chunks(source, size)
    current = next(chunks, None)
    if current is None:
        return
    following = next(chunks, None)
    if following is None:
        yield _parse(current[0], 1, account_property), True
        return
    pool = _parser_pool()
    inflight: deque[tuple[Future[bytes] | None, Chunk, int, SharedMemory | None]] = deque()
    number = 1
    segments = SharedSegments()

    def submit(chunk: tuple[Chunk, int]) -> None:
        nonlocal number, pool
        lines, count = chunk
        future: Future[bytes] | None = None
        shared = None
        if pool is not None:
            shared = segments.put(lines)
            try:
                future = pool.submit(_parse_pickled, shared[0] if shared else lines, number, account_property)
            except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: at interpreter shutdown
                _give_up(pool, exc)
                pool = None
        inflight.append((future, lines, number, shared[1] if shared else None))
        number += count

    try:
        # The first chunk is parsed here while the worker starts (a fresh interpreter: a few
        # tenths of a second at the first import of a process) and parses the second: the
        # worker's first parse would otherwise be waited for with nothing else to do.
        inflight.append((None, current[0], number, None))
        number += current[1]
        submit(following)
        while inflight:
            future, lines, first, shared = inflight[0]
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
            inflight.popleft()
            if shared is not None:
                segments.give_back(shared)
            if parsed is None:
                parsed = _parse(lines, first, account_property)
            del lines
            following = next(chunks, None)  # read on while the worker parses the chunk in flight
            if following is not None:
                submit(following)
            yield parsed, not inflight
    finally:  # done, stopped early or failed: no segment is left behind (a worker still reading keeps its map)
        segments.close()


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
    # Text with no \r at all (the usual export): counted and cut at \n only, each block copied
    # once on its way into a chunk. From the first block with a \r on, every line end counts.
    pending: list[str] = []  # read and not yet handed out: whole lines, the last maybe unfinished
    have = 0  # line ends in pending
    while block := source.read(BLOCK):
        if "\r" in block:
            yield from _line_chunks_any_end(source, size, "".join(pending) + block)
            return
        count = block.count("\n")
        while have + count >= size:  # a chunk ends in this block
            cut = _after_lines(block, size - have)
            pending.append(block[:cut])
            yield "".join(pending), size
            pending, block, count, have = [], block[cut:], count - (size - have), 0
        pending.append(block)
        have += count
    text = "".join(pending)
    if text:  # the last line may have no end
        yield text, have + (not text.endswith("\n"))


def _line_chunks_any_end(source: io.TextIOBase, size: int, text: str) -> Iterator[tuple[Chunk, int]]:
    """:func:`line_chunks` of ``text`` and then the rest of ``source``, ``\\r\\n`` and a lone ``\\r``
    ending lines too."""
    parts: list[str] = []
    have = 0  # lines in parts
    carry = ""  # an unfinished last line
    block = text
    while True:
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
        block = source.read(BLOCK)


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
