"""A cheap HTTP/1.1 load generator for the benchmarks: keep-alive connections over raw asyncio
streams (uvloop when installed), open loop or closed loop.

Why not httpx: on the development machine an ``httpx.AsyncClient`` costs about 1 ms of client
CPU per request (more with a large pool), as much as the server under test, and both share the
same 2 cores. Here a request costs a few tens of microseconds: the request is written as one
buffer and the response read with one ``readuntil`` and one ``readexactly``.

- **Open loop** (:func:`open_loop`, after wrk2): request ``i`` is due at ``start + i / rate``
  whatever happened to the others; each latency is measured from that due time, so a stall of
  the server counts against every request that should have been sent during it (no coordinated
  omission). At most ``connections`` requests are in flight; a request due while all of them
  are busy waits, and its wait is part of its latency.
- **Closed loop** (:func:`closed_loop`): ``connections`` requests in flight, each connection
  sending its next request when the answer to the previous one arrived: the maximum throughput.

Not a general client: ``Content-Length`` bodies only (no chunked transfer), no TLS, no redirects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# A request is built when it is sent (so a signature carries the time of sending):
# index -> (path, headers, body).
Build = Callable[[int], tuple[str, dict[str, str], bytes]]


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Response:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
                          f"{head}\r\n".encode("latin-1") + body)  # fmt: skip
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].split(b"\r\n")
        fields = {}
        for line in lines:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"content-length" not in fields:
            raise RuntimeError(f"response without Content-Length: {status_line!r} {fields!r}")
        payload = await self.reader.readexactly(int(fields[b"content-length"]))
        if fields.get(b"connection", b"").lower() == b"close":
            raise RuntimeError("the server closed the connection")
        return Response(int(status_line.split(b" ", 2)[1]), fields, payload)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, per request, in request order
    responses: list[Response | None] = field(repr=False)
    wall: float  # seconds from the first due time (open) or first send (closed) to the last answer
    late_starts: int = 0  # open loop: requests sent more than 1 ms after they were due (no connection free)


async def _with_connections(host: str, port: int, count: int,
                            body: Callable[[list[Connection]], Awaitable[T]]) -> T:  # fmt: skip
    connections = await asyncio.gather(*(Connection.open(host, port) for _ in range(count)))
    try:
        return await body(list(connections))
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def open_loop(host: str, port: int, build: Build, count: int, rate: float, connections: int,
                    method: str = "POST") -> LoadResult:  # fmt: skip
    """``count`` requests at ``rate`` per second, at most ``connections`` in flight."""
    latencies = [0.0] * count
    responses: list[Response | None] = [None] * count
    late = 0

    async def run(pool: list[Connection]) -> LoadResult:
        nonlocal late
        clock = time.perf_counter  # not loop.time(): uvloop's counts whole milliseconds
        start = clock() + 0.05
        cursor = iter(range(count))  # shared: each connection takes the next request due

        async def worker(conn: Connection) -> None:
            nonlocal late
            for i in cursor:
                due = start + i / rate
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.001:
                    late += 1
                path, headers, body = build(i)
                responses[i] = await conn.request(method, path, headers, body)
                latencies[i] = clock() - due

        await asyncio.gather(*(worker(c) for c in pool))
        return LoadResult(latencies, responses, clock() - start, late)

    return await _with_connections(host, port, connections, run)


async def closed_loop(host: str, port: int, build: Build, count: int, connections: int,
                      method: str = "POST") -> LoadResult:  # fmt: skip
    """``count`` requests, ``connections`` in flight, each sent as soon as a connection is free."""
    latencies = [0.0] * count
    responses: list[Response | None] = [None] * count

    async def run(pool: list[Connection]) -> LoadResult:
        cursor = iter(range(count))
        started = time.perf_counter()

        async def worker(conn: Connection) -> None:
            for i in cursor:
                path, headers, body = build(i)
                sent = time.perf_counter()
                responses[i] = await conn.request(method, path, headers, body)
                latencies[i] = time.perf_counter() - sent

        await asyncio.gather(*(worker(c) for c in pool))
        return LoadResult(latencies, responses, time.perf_counter() - started)

    return await _with_connections(host, port, connections, run)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (cheaper per request), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
