"""The one async HTTP client every vendor connector uses (DESIGN §8).

``VendorClient`` wraps ``httpx.AsyncClient`` with per-request timeouts, bounded retries, the
vendors' rate-limit headers and a circuit breaker per vendor.

Retries use ``tenacity.AsyncRetrying``: it sleeps with ``asyncio.sleep`` (never ``time.sleep``
in the event loop) and composes exactly the policy we need from maintained parts — full-jitter
exponential backoff (``wait_random_exponential``), a wait taken from the server's own headers
when it sends them, and two bounds (``stop_after_attempt`` and ``stop_before_delay``, which gives
up rather than start a sleep that would end past the deadline). Retried: transport errors
(connect/read timeouts, connection errors, a peer that hangs up) and HTTP 429/500/502/503/504.
Other 4xx raise ``VendorRequestError`` at once. A 429/503 waits as the vendor asks
(``Retry-After`` in seconds or as an HTTP-date, else ``X-RateLimit-Reset``/``ratelimit-reset``:
a value above 10^9 is a unix epoch (Intercom, SendGrid), else seconds (Zendesk)); a wait beyond
``max_wait`` is not slept: it raises ``RateLimitedError`` (429) or ``VendorUnavailableError``
(503) carrying ``retry_after``. Non-idempotent POSTs are retried too (SendGrid mail send may then
be sent twice after a read timeout): callers that cannot accept that must dedupe.

The circuit breaker is ours, ~70 lines. ``pybreaker`` runs async code only through Tornado;
``aiobreaker`` (last release 2021) and ``purgatory`` let every caller through while half-open
(no single trial call) and time on the wall clock; purgatory also reports "opened" until a
call arrives, while a status tool needs the current state. Accounting, per call of
``request``/``get_json``/``post_json``/``stream_lines`` (not per attempt): a call whose retries
ended in ``VendorUnavailableError`` (exhausted, deadline, long 503, or a stream broken midway)
is a failure; a call the vendor answered for good (2xx, a 4xx, a 429 asking for more than
``max_wait``) is a success and closes the breaker; a cancelled call counts as neither.
``failure_threshold`` consecutive failures open it for ``reset_after`` seconds, during which
calls raise ``CircuitOpenError`` without touching the network; then it is half-open and lets
one trial call through, with a single attempt: success closes it, failure re-opens it.

Messages and logs name vendor, method, URL path, status and a short body excerpt, never
headers, query strings or credentials (known secrets are also redacted from excerpts).
"""

from __future__ import annotations

import base64
import json as jsonlib
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypeVar

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from events.errors import CSError

log = structlog.get_logger(__name__)
T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RETRY_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_SECRET_HEADER_WORDS = ("auth", "token", "key", "secret", "cookie", "signature")


class VendorError(CSError):
    """Base of every vendor call failure; the message is safe to show (no secrets)."""

    def __init__(self, vendor: str, message: str, *, retry_after: float | None = None) -> None:
        self.vendor, self.retry_after = vendor, retry_after
        super().__init__(f"{vendor}: {message}")


class VendorRequestError(VendorError):
    """The vendor refused the request (a 4xx other than 429, or an unexpected 3xx). Not retried."""

    def __init__(self, vendor: str, status: int, method: str, path: str, excerpt: str) -> None:
        self.status, self.method, self.path, self.excerpt = status, method, path, excerpt
        super().__init__(vendor, f"{method} {path} answered HTTP {status}: {excerpt or '(empty body)'}")


class RateLimitedError(VendorError):
    """429 asking for a wait longer than ``max_wait``; ``retry_after`` is what the vendor asked."""


class CircuitOpenError(VendorError):
    """The vendor's breaker is open (or its half-open trial is in flight); nothing was sent."""


class MalformedResponseError(VendorError):
    """A 2xx whose body is not the JSON it must be: a vendor bug, not retried."""


class VendorUnavailableError(VendorError):
    """Retries exhausted (attempts or deadline), a long 503, or a stream broken midway."""


class CircuitBreaker:
    """Consecutive-failure breaker, shared by every client of one vendor (thread-safe)."""

    def __init__(self, vendor: str, failure_threshold: int = 5, reset_after: float = 30.0) -> None:
        self.vendor, self.failure_threshold, self.reset_after = vendor, failure_threshold, reset_after
        self.consecutive_failures = 0
        self.opened_at: float | None = None  # unix time, for display; None while closed
        self._opened_mono = 0.0
        self._trial_in_flight = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """``closed``, ``open``, or ``half_open`` (open and ``reset_after`` has elapsed)."""
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self._opened_mono >= self.reset_after else "open"

    def before_call(self) -> bool:
        """Admit a call or raise CircuitOpenError; True when the call is the half-open trial."""
        with self._lock:
            state = self.state
            if state == "closed":
                return False
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            wait = max(0.0, self._opened_mono + self.reset_after - time.monotonic())
        raise CircuitOpenError(self.vendor, f"circuit open after {self.consecutive_failures} "
                               f"consecutive failures; next trial in {wait:.1f} s", retry_after=wait)

    def record_success(self) -> None:
        with self._lock:
            if self.opened_at is not None:
                log.info("vendor_circuit_closed", vendor=self.vendor)
            self.consecutive_failures, self.opened_at, self._trial_in_flight = 0, None, False

    def record_failure(self, trial: bool = False) -> None:
        with self._lock:
            self.consecutive_failures += 1
            reopen = trial and self._trial_in_flight
            if reopen or (self.opened_at is None and self.consecutive_failures >= self.failure_threshold):
                self.opened_at, self._opened_mono = time.time(), time.monotonic()
                self._trial_in_flight = False
                log.warning("vendor_circuit_opened", vendor=self.vendor, reset_after=self.reset_after,
                            consecutive_failures=self.consecutive_failures)

    def release(self, trial: bool) -> None:
        """A call that proved nothing (cancelled): free the half-open trial slot."""
        if trial:
            with self._lock:
                self._trial_in_flight = False


_breakers: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def get_breaker(vendor: str) -> CircuitBreaker:
    """The process-wide breaker of ``vendor`` (created with the defaults on first use)."""
    with _registry_lock:
        return _breakers.setdefault(vendor, CircuitBreaker(vendor))


def configure_breaker(vendor: str, *, failure_threshold: int = 5, reset_after: float = 30.0) -> CircuitBreaker:
    """Set ``vendor``'s breaker settings (composition root, tests); returns the breaker."""
    breaker = get_breaker(vendor)
    breaker.failure_threshold, breaker.reset_after = failure_threshold, reset_after
    return breaker


def all_breakers() -> dict[str, CircuitBreaker]:
    """Every vendor's breaker, for a status tool."""
    with _registry_lock:
        return dict(_breakers)


def reset_breakers() -> None:
    """Forget every breaker (tests)."""
    with _registry_lock:
        _breakers.clear()


class _RetryableStatus(Exception):
    def __init__(self, status: int, wait: float | None) -> None:
        self.status, self.wait = status, wait


def server_wait(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds the vendor asks us to wait, from Retry-After or the reset headers; None if absent."""
    now = time.time() if now is None else now
    if value := headers.get("retry-after", "").strip():
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        try:
            reset = float(headers.get(name, ""))
        except ValueError:
            continue
        return max(0.0, reset - now if reset > 1e9 else reset)
    return None


class VendorClient:
    """Async HTTP client for one vendor: see the module docstring for the policy."""

    def __init__(self, vendor: str, base_url: str, *, auth: httpx.Auth | tuple[str, str] | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 30.0, connect_timeout: float = 10.0,
                 max_attempts: int = 6, max_wait: float = 60.0, deadline: float = 300.0,
                 backoff_base: float = 0.5, backoff_max: float = 10.0) -> None:
        self.vendor, self.max_attempts, self.max_wait, self.deadline = vendor, max_attempts, max_wait, deadline
        self._backoff = wait_random_exponential(multiplier=backoff_base, max=backoff_max)  # full jitter
        self._client = httpx.AsyncClient(base_url=base_url, auth=auth, headers=headers,
                                         timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self._secrets = [v.split(" ", 1)[-1] for k, v in (headers or {}).items()  # "Bearer X" -> "X"
                         if any(w in k.lower() for w in _SECRET_HEADER_WORDS)]
        if isinstance(auth, tuple):
            self._secrets.append(auth[1])
            self._secrets.append(base64.b64encode(":".join(auth).encode()).decode())
        self._secrets = [s for s in self._secrets if len(s) >= 4]

    @property
    def breaker(self) -> CircuitBreaker:
        return get_breaker(self.vendor)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, *, params: Any = None, json: Any = None,
                      content: Any = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """Send with retries; ``url`` is relative to ``base_url`` or absolute on the same origin."""
        req = self._build(method, url, params=params, json=json, content=content, headers=headers)

        async def attempt() -> httpx.Response:
            response = await self._client.send(req)
            await self._check(response, req)
            return response

        return await self._call(req, attempt)

    async def get_json(self, url: str, *, params: Any = None) -> Any:
        """GET and decode JSON; a body that is not JSON raises MalformedResponseError."""
        return self._decode(await self.request("GET", url, params=params), allow_empty=False)

    async def post_json(self, url: str, body: Any) -> Any:
        """POST a JSON body and decode the answer; an empty answer (202, 204) gives None."""
        return self._decode(await self.request("POST", url, json=body), allow_empty=True)

    async def stream_lines(self, url: str, *, params: Any = None) -> AsyncIterator[bytes]:
        """Yield the non-empty lines of a (gzip) JSONL body; retried only until its first byte."""
        req = self._build("GET", url, params=params, headers={"Accept-Encoding": "gzip"})

        async def attempt() -> tuple[httpx.Response, AsyncIterator[bytes], bytes]:
            response = await self._client.send(req, stream=True)
            try:
                await self._check(response, req)
                chunks = response.aiter_bytes()
                return response, chunks, await anext(chunks, b"")
            except BaseException:
                await response.aclose()
                raise

        response, chunks, chunk = await self._call(req, attempt)
        buffer = b""
        try:
            try:
                while chunk:
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield line.rstrip(b"\r")
                    chunk = await anext(chunks, b"")
            except (httpx.TransportError, httpx.DecodingError) as exc:
                self.breaker.record_failure()
                raise VendorUnavailableError(self.vendor, f"GET {req.url.path}: stream broken midway "
                                             f"({type(exc).__name__})") from None
            if buffer.strip():
                yield buffer.rstrip(b"\r")
        finally:
            await response.aclose()

    def _build(self, method: str, url: str, **kwargs: Any) -> httpx.Request:
        req = self._client.build_request(method.upper(), url, **kwargs)
        base = self._client.base_url
        if (req.url.scheme, req.url.host, req.url.port) != (base.scheme, base.host, base.port):
            raise VendorError(self.vendor, f"refusing to send a request to another origin ({req.url.host})")
        return req

    async def _call(self, req: httpx.Request, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` under the breaker and the retry policy."""
        trial = self.breaker.before_call()
        limit = 1 if trial else self.max_attempts  # a half-open trial is one attempt
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((_RetryableStatus, *_RETRY_TRANSPORT)),
            stop=stop_after_attempt(limit) | stop_before_delay(self.deadline),
            wait=self._wait, before_sleep=self._log_retry, reraise=False)
        started = time.monotonic()
        try:
            result: T = await retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt
            error = self._exhausted(req, last.exception(), last.attempt_number, limit, time.monotonic() - started)
            self.breaker.record_failure(trial)
            raise error from None
        except VendorUnavailableError:
            self.breaker.record_failure(trial)
            raise
        except VendorError:
            self.breaker.record_success()
            raise
        except httpx.HTTPError as exc:  # not retryable (a body that does not decode, a bad URL)
            self.breaker.release(trial)
            raise VendorError(self.vendor, f"{req.method} {req.url.path}: {type(exc).__name__}") from None
        except BaseException:
            self.breaker.release(trial)
            raise
        self.breaker.record_success()
        return result

    async def _check(self, response: httpx.Response, req: httpx.Request) -> None:
        """Return on 2xx; raise a retryable marker or the final error otherwise."""
        status, path = response.status_code, req.url.path
        if 200 <= status < 300:
            return
        if status in RETRY_STATUSES:
            wait = server_wait(response.headers) if status in (429, 503) else None
            if wait is not None and wait > self.max_wait:
                cls = RateLimitedError if status == 429 else VendorUnavailableError
                raise cls(self.vendor, f"{req.method} {path} answered HTTP {status} and asked to wait "
                          f"{wait:.0f} s (more than max_wait {self.max_wait:.0f} s)", retry_after=wait)
            raise _RetryableStatus(status, wait)
        await response.aread()
        raise VendorRequestError(self.vendor, status, req.method, path, self._excerpt(response))

    def _decode(self, response: httpx.Response, *, allow_empty: bool) -> Any:
        if allow_empty and not response.content.strip():
            return None
        try:
            return jsonlib.loads(response.content)
        except ValueError:
            raise MalformedResponseError(
                self.vendor, f"{response.request.method} {response.request.url.path} answered HTTP "
                f"{response.status_code} with a body that is not JSON: {self._excerpt(response)}") from None

    def _excerpt(self, response: httpx.Response, limit: int = 200) -> str:
        text = " ".join(response.content[: limit * 4].decode("utf-8", "replace").split())
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text[:limit] + ("…" if len(text) > limit else "")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryableStatus) and exc.wait is not None:
            return exc.wait + random.uniform(0, 0.1)  # what the vendor asked, plus a little spread
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause = exc.status if isinstance(exc, _RetryableStatus) else type(exc).__name__
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("vendor_retry", vendor=self.vendor, status=cause, attempt=state.attempt_number,
                    max_attempts=self.max_attempts, wait=round(wait, 3))

    def _exhausted(self, req: httpx.Request, exc: BaseException | None, attempts: int, limit: int,
                   elapsed: float) -> VendorUnavailableError:
        cause = f"HTTP {exc.status}" if isinstance(exc, _RetryableStatus) else type(exc).__name__
        asked = exc.wait if isinstance(exc, _RetryableStatus) else None
        why = "deadline reached" if attempts < limit else "retries exhausted"
        return VendorUnavailableError(self.vendor, f"{req.method} {req.url.path}: {why} after {attempts} "
                                      f"attempt(s) in {elapsed:.1f} s (last: {cause})", retry_after=asked)
