"""Mixpanel: the raw event export as JSONL, optionally gzip-compressed, and events (VENDORS.md §3)."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.vendors.server import VendorFake, basic_credentials, json_response

EXPORT_PATH = "/api/2.0/export"
MAX_LIMIT = 100_000


class MixpanelFake(VendorFake):
    """``GET /api/2.0/export`` over ``events`` (a list the test may append to).

    Auth: HTTP Basic with the service account ``username:secret``, else 401. ``project_id`` is
    required (400 with a JSON error when missing; 403 for another project); ``from_date`` and
    ``to_date`` (yyyy-mm-dd, inclusive) select events by the UTC day of ``properties.time``;
    optional ``event`` (a JSON array of names) and ``limit``. The body is JSONL ordered by
    ``(time, $insert_id)``, gzip-compressed when ``Accept-Encoding`` names gzip. Mixpanel sends
    no rate-limit headers, so neither does the fake (inject a 429 with ``fail_next``).
    """

    default_path = EXPORT_PATH
    name = "mixpanel"

    def __init__(
        self,
        *,
        project_id: str = "2195193",
        username: str = "cs-export.sa",
        secret: str = "mixpanel-service-secret",
        events: Iterable[dict[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.project_id = project_id
        self.username = username
        self.secret = secret
        self.events: list[dict[str, Any]] = list(events)

    def routes(self) -> list[Route]:
        return [Route(EXPORT_PATH, self.endpoint(self._export), methods=["GET"])]

    def error_body(self, status: int, message: str) -> object:
        return {"error": message, "status": "error"}

    def _export(self, request: Request, body: bytes) -> Response:
        if basic_credentials(request) != (self.username, self.secret):
            return json_response(self.error_body(401, "Invalid service account credentials"), 401)
        params = request.query_params
        project_id = params.get("project_id")
        if not project_id:
            return json_response(self.error_body(400, "project_id is required"), 400)
        if project_id != self.project_id:
            return json_response(self.error_body(403, f"no access to project {project_id}"), 403)
        try:
            first, last = _day(params, "from_date"), _day(params, "to_date")
            if first > last:
                raise ValueError("from_date must not be after to_date")
            names = _event_names(params.get("event"))
            limit = _limit(params.get("limit"))
        except ValueError as exc:
            return json_response(self.error_body(400, str(exc)), 400)
        selected = sorted(
            (e for e in self.events if first <= _utc_day(e) <= last and (names is None or e["event"] in names)),
            key=lambda e: (int(e["properties"]["time"]), str(e["properties"]["$insert_id"])),
        )[:limit]
        payload = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in selected).encode()
        headers: dict[str, str] = {}
        if _accepts_gzip(request.headers.get("accept-encoding", "")):
            payload = gzip.compress(payload)
            headers["Content-Encoding"] = "gzip"
        return Response(payload, media_type="text/plain", headers=headers)


def _day(params: Mapping[str, str], name: str) -> date:
    value = params.get(name)
    if value is None:
        raise ValueError(f"{name} is required (yyyy-mm-dd)")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be yyyy-mm-dd, got {value!r}") from exc


def _event_names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    try:
        names = json.loads(value)
    except ValueError as exc:
        raise ValueError("event must be a JSON array of event names") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("event must be a JSON array of event names")
    return set(names)


def _limit(value: str | None) -> int:
    if value is None:
        return MAX_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer between 1 and {MAX_LIMIT}")
    return int(value)


def _utc_day(event: dict[str, Any]) -> date:
    return datetime.fromtimestamp(int(event["properties"]["time"]), UTC).date()


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, weight = item.strip().partition(";")
        if coding.strip().lower() == "gzip" and weight.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def mixpanel_event(
    name: str,
    account: str,
    user: str,
    ts: datetime,
    insert_id: str | None = None,
    *,
    account_property: str = "account_id",
    properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An exported event: ``time`` (unix seconds of ``ts``), ``distinct_id`` = ``user``,
    ``account_property`` = ``account``, extra ``properties``. ``$insert_id`` defaults to a stable
    hash of (name, account, user, time), so the same call twice is the same event."""
    moment = int(ts.timestamp())
    stable = f"{name}|{account}|{user}|{moment}"
    return {
        "event": name,
        "properties": {
            "time": moment,
            "distinct_id": user,
            "$insert_id": insert_id or hashlib.sha1(stable.encode()).hexdigest()[:32],
            "mp_processing_time_ms": moment * 1000 + 4_321,
            account_property: account,
            **(properties or {}),
        },
    }
