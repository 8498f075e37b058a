"""`cs serve`'s stdio transport: the SDK's message loop over asyncio pipes.

The SDK's ``stdio_server()`` reads and writes the standard streams through ``anyio.wrap_file``:
every line read, every write and every flush is a round trip to a worker thread (three per tool
call, each waking the event loop from another thread). Here the same loop runs, the SDK's own
``stdio_server(stdin=..., stdout=...)`` with its parsing and serialisation, but over
non-blocking pipes that the event loop watches itself. On the health benchmark's book this cut
the server's CPU per ``calculate_health_score`` call by about a tenth and its latency with it
(bench/README.md, health, round 4).

As the SDK does, the wire is served from private duplicates of fds 0 and 1 while fd 0 reads the
null device and fd 1 writes to stderr, so a stray ``print`` or a child process cannot corrupt the
protocol stream; both are restored afterwards, in blocking mode as found. When the standard
streams are not pipes or sockets (a terminal, a file), or the SDK's server lacks what this
relies on, the SDK's own transport serves instead.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

log = structlog.get_logger(__name__)

MAX_LINE = 64 * 1024 * 1024  # a longer request line is skipped (the SDK answers its remains as invalid)


def run_stdio(server: MCPServer[Any]) -> None:
    """Serve ``server`` on stdin/stdout until the client closes stdin."""
    if not _pipes(0, 1) or not hasattr(server, "_lowlevel_server"):
        log.info("stdio.sdk_transport", reason="not pipes" if not _pipes(0, 1) else "sdk server changed")
        server.run("stdio")
        return
    anyio.run(_serve, server)


def _pipes(*fds: int) -> bool:
    try:
        return all(stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) for mode in (os.fstat(fd).st_mode for fd in fds))
    except OSError:
        return False


async def _serve(server: MCPServer[Any]) -> None:
    lowlevel = server._lowlevel_server  # what MCPServer.run_stdio_async serves too
    loop = asyncio.get_running_loop()
    with _claimed() as (wire_in, wire_out):
        reader = asyncio.StreamReader(limit=MAX_LINE)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0))  # fmt: skip
        write_transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0))  # fmt: skip
        writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
        try:
            async with stdio_server(stdin=_Lines(reader), stdout=_Wire(writer)) as (read_stream, write_stream):  # type: ignore[arg-type]
                await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
        finally:
            read_transport.close()
            write_transport.close()


class _Lines:
    """The wire's lines as text: what ``stdio_server`` iterates."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while True:
            try:
                line = await self._reader.readline()
            except ValueError:  # longer than MAX_LINE: dropped; what follows of it fails to parse
                log.warning("stdio.line_too_long", limit=MAX_LINE)
                continue
            if not line:
                return
            yield line.decode("utf-8", errors="replace")


class _Wire:
    """What ``stdio_server`` writes to: one buffered write per message, flushed by draining."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


@contextmanager
def _claimed() -> Iterator[tuple[int, int]]:
    """Private duplicates of fds 0 and 1 for the wire; fd 0 reads the null device and fd 1 goes
    to stderr meanwhile. Restores both, in blocking mode (the pipe transports set the shared
    file descriptions non-blocking)."""
    sys.stdout.flush()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
        os.dup2(2, 1)
        yield wire_in, wire_out
    finally:
        os.close(null)
        for saved, fd in ((saved_in, 0), (saved_out, 1)):
            os.dup2(saved, fd)
            os.set_blocking(fd, True)
            os.close(saved)
