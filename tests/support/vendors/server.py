"""The machinery shared by the vendor fakes: an ASGI app served by uvicorn in a background thread
on a free loopback port, a request log, and a queue of injected faults per path.

A fake subclasses ``VendorFake``, declares its Starlette routes with ``self.endpoint(handler)``
(a handler is a plain function of the request and its raw body that returns a response) and is
used as a context manager::

    with ZendeskFake(tickets=[...]) as zendesk:
        zendesk.fail_next(status=429, headers={"Retry-After": "1"})
        ...  # point the client at zendesk.base_url
        assert zendesk.requests[0].query["start_time"] == "0"
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 5.0  # seconds; bound of the wait for a server to listen
SHUTDOWN_TIMEOUT = 5.0  # seconds; bound of the wait for its thread to end
GRACEFUL_SHUTDOWN = 1  # second given to in-flight requests (e.g. an injected delay) on exit

Handler = Callable[[Request, bytes], Response]
Endpoint = Callable[[Request], Awaitable[Response]]


@contextmanager
def serve_asgi(app: ASGIApp, *, name: str = "asgi-fake", lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a daemon thread; yield its base URL.

    ``lifespan="on"`` runs the app's own lifespan (startup before the server listens, shutdown on
    exit), for apps that open their resources there (e.g. ``mcp_server.http.build_http_app``).

    The socket is bound before the server starts (no port race). Entry returns once uvicorn
    reports that it listens (at most ``STARTUP_TIMEOUT``); exit asks it to stop and joins the
    thread (at most ``SHUTDOWN_TIMEOUT``, then a forced exit), raising if it is still alive.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"{name}: server thread ended before it started listening")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: not listening after {STARTUP_TIMEOUT} s")
            time.sleep(0.01)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(SHUTDOWN_TIMEOUT)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"{name}: server thread did not stop")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it. Header names are lower case; for a repeated query
    parameter ``query`` keeps the last value."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Fault:
    """What the next request to a path gets instead of (or before) the normal answer.

    ``delay`` seconds are slept first (``asyncio.sleep``); then ``status`` answers with the
    vendor's error body and ``headers``; else ``malformed`` answers 200 with the normal body cut
    about halfway, inside a line (truncated JSON / JSONL / gzip stream); else the normal answer.
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    malformed: bool = False
    delay: float = 0.0


class VendorFake(abc.ABC):
    """Base of the vendor fakes: fault queue, request log, server lifecycle.

    Subclasses set ``default_path`` (the path ``fail_next`` targets by default) and ``name``,
    implement ``routes()``, and may override ``error_body`` and ``rate_limit_headers`` (which
    report ``rate_limit`` requests per window, less the requests received so far).
    """

    default_path: ClassVar[str]
    name: ClassVar[str]

    def __init__(self, *, rate_limit: int = 0) -> None:
        self.rate_limit = rate_limit
        self.requests: list[RecordedRequest] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` while the fake runs."""
        if self._base_url is None:
            raise RuntimeError(f"{self.name} fake is not running; use it as a context manager")
        return self._base_url

    def __enter__(self) -> Self:
        app = Starlette(
            routes=self.routes(),
            exception_handlers={404: self._unrouted, 405: self._unrouted},
        )
        self._base_url = self._stack.enter_context(serve_asgi(app, name=f"{self.name}-fake"))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._base_url = None
        self._stack.close()

    @abc.abstractmethod
    def routes(self) -> list[Route]:
        """The vendor's endpoints, each wrapped with ``self.endpoint``."""

    def error_body(self, status: int, message: str) -> object:
        """The vendor's JSON error document for ``status``."""
        return {"error": message}

    def rate_limit_headers(self, *, exhausted: bool = False) -> dict[str, str]:
        """Rate-limit headers for a response (``exhausted`` for a 429); none unless overridden."""
        return {}

    def remaining_quota(self) -> int:
        """``rate_limit`` minus the requests received so far (never below 0)."""
        with self._lock:
            return max(self.rate_limit - len(self.requests), 0)

    def fail_next(
        self,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        malformed: bool = False,
        delay: float = 0.0,
        path: str | None = None,
    ) -> None:
        """Queue a fault for the next ``times`` requests to ``path`` (default: the main endpoint).

        A 429 also carries the vendor's exhausted rate-limit headers; ``headers`` override them.
        """
        if status is None and not malformed and delay <= 0:
            raise ValueError("a fault needs a status, malformed=True or a positive delay")
        if status is not None and malformed:
            raise ValueError("a fault is either an error status or a malformed 200, not both")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = Fault(status=status, headers=dict(headers or {}), malformed=malformed, delay=delay)
        with self._lock:
            self._faults.setdefault(path or self.default_path, deque()).extend([fault] * times)

    def requests_to(self, path: str | None = None) -> list[RecordedRequest]:
        """The recorded requests to ``path`` (default: the main endpoint), oldest first."""
        wanted = path or self.default_path
        with self._lock:
            return [r for r in self.requests if r.path == wanted]

    def endpoint(self, handler: Handler) -> Endpoint:
        """Wrap ``handler`` as a Starlette endpoint that records the request and applies faults."""

        async def run(request: Request) -> Response:
            return await self._answer(request, handler)

        return run

    async def _answer(self, request: Request, handler: Handler) -> Response:
        body = await self._record(request)
        fault = self._take_fault(request.url.path)
        if fault is None:
            return handler(request, body)
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault.status is not None:
            headers = self.rate_limit_headers(exhausted=True) if fault.status == 429 else {}
            headers.update(fault.headers)
            return json_response(self.error_body(fault.status, f"injected fault {fault.status}"), fault.status, headers)
        response = handler(request, body)
        return _truncated(response) if fault.malformed else response

    async def _unrouted(self, request: Request, exc: Exception) -> Response:
        """404 / 405 in the vendor's error format, recorded and subject to faults like any request."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = f"no route for {request.method} {request.url.path}"
        return await self._answer(
            request, lambda _request, _body: json_response(self.error_body(status, message), status)
        )

    async def _record(self, request: Request) -> bytes:
        body = await request.body()
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(recorded)
        return body

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(path)
            return queue.popleft() if queue else None


def json_response(document: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A compact JSON response (``application/json; charset=utf-8``)."""
    return JSONResponse(document, status_code=status, headers=dict(headers or {}))


def _truncated(response: Response) -> Response:
    """Status 200, the same headers (but the length), the body cut about halfway, inside a line
    (so the last JSONL line is partial too)."""
    body = bytes(response.body)
    end = len(body) // 2
    while end > 1 and b"\n" in body[end - 1 : end + 1]:
        end -= 1
    cut = body[:end] or b"{"
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(cut, status_code=200, headers=headers)


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """``(username, password)`` of an HTTP Basic ``Authorization`` header, else None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, else None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def reset_at(window: int, *, exhausted: bool) -> int:
    """Unix second at which the quota resets: the end of the current ``window`` (seconds); for an
    injected 429, one second from now, so that a client honouring it does not slow the tests."""
    now = int(time.time())
    return now + 1 if exhausted else (now // window + 1) * window


def encode_cursor(position: object) -> str:
    """An opaque cursor: url-safe base64 of the JSON of ``position``."""
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> Any:
    """The position inside a cursor made by ``encode_cursor``; ValueError if it is not one."""
    try:
        return json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def latest_versions(records: list[dict[str, Any]], version_key: str) -> list[dict[str, Any]]:
    """One record per ``id``: the one with the greatest ``version_key`` (the last given on a tie).

    A vendor's export serves each object's current state; the test data may hold several.
    """
    latest: dict[object, dict[str, Any]] = {}
    for record in records:
        current = latest.get(record["id"])
        if current is None or record[version_key] >= current[version_key]:
            latest[record["id"]] = record
    return list(latest.values())
