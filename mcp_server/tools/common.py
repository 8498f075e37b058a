"""What every tool shares: the services from the lifespan, the caller, error translation."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from events.commands import CommandMeta
from events.errors import CSError
from mcp_server.services import Services
from projections.base import as_utc
from projections.health_inputs_query import book_feature_first_days
from projections.runner import ProjectionStoppedError, ViewsBehindError


def services(ctx: Context) -> Services:
    svc: Services = ctx.request_context.lifespan_context
    return svc


def command_meta(ctx: Context, tool: str) -> CommandMeta:
    """The actor is the MCP client as it introduced itself; the source is the tool."""
    client = "unknown-client"
    try:
        params = ctx.session.client_params
        if params is not None:
            client = params.client_info.name
    except (AttributeError, LookupError):
        pass
    return CommandMeta(actor=f"mcp:{client}", source=f"mcp.{tool}", source_id=str(ctx.request_id))


@contextmanager
def tool_errors() -> Iterator[None]:
    """Expected failures become ToolError with their own (field-naming) message."""
    try:
        yield
    except CSError as exc:
        raise ToolError(str(exc)) from None
    except (ProjectionStoppedError, ViewsBehindError) as exc:
        raise ToolError(f"views unavailable: {exc}") from None


def read_ready(svc: Services) -> None:
    """Read-your-writes: bring the views to the head of the log before answering."""
    svc.engine.ensure_current()


def after_write(svc: Services, position: int | None) -> None:
    """Fold a command's events now, so the next read costs nothing extra."""
    if position is not None:
        svc.engine.wake()


def instant(moment: datetime | None) -> datetime:
    """An instant a caller gave, in UTC (without a zone it is UTC); now when not given."""
    return as_utc(moment) if moment is not None else datetime.now(UTC)


def future_note(**instants: datetime | None) -> str | None:
    """What an answer as of an instant after now is worth, said in the result (None: every instant
    given is now or earlier). Such an answer is computed like any other, from the events recorded
    so far: the days after now count as days without activity (usage, touches), and events that
    occur before that instant will still change it. It reads like data, so it says it is not a
    forecast. (An override's end, say, can be checked this way: the tests of expiry do.)"""
    now = datetime.now(UTC)
    later = [f"{name} {as_utc(m).isoformat()}" for name, m in instants.items() if m is not None and as_utc(m) > now]
    if not later:
        return None
    return (f"{' and '.join(later)} {'is' if len(later) == 1 else 'are'} after now "
            f"({now.isoformat(timespec='seconds')}): computed from what is recorded so far, with the days after "
            "now counted as days without activity; events that occur before then will change it. Not a forecast.")


def joined(*notes: str | None) -> str | None:
    """The notes given, in order, as one (None when there are none)."""
    present = [n for n in notes if n]
    return "; ".join(present) if present else None


def none_if_empty(value: Any) -> Any:
    return None if value in ("", None) else value


def unseen_features(svc: Services, named: Sequence[tuple[str, str]]) -> list[str]:
    """Warnings for features (``(field, name)`` pairs) the usage data never showed. A name not seen
    that looks like a seen feature (the same but for case or spaces, or a close spelling) is a
    typo: refused naming the field and the seen name, before anything is recorded, so a scorecard
    or a milestone never silently counts every customer as not using it. One with no close match
    (a feature about to launch) passes, with a warning."""
    read_ready(svc)
    with svc.store.snapshot() as tx:
        known = set(book_feature_first_days(tx))
    ordered = sorted(known)
    folded = {" ".join(f.split()).casefold(): f for f in ordered}
    warnings = []
    for field, raw in named:
        name = raw.strip()
        if name in known:
            continue
        near = folded.get(" ".join(name.split()).casefold()) or next(iter(difflib.get_close_matches(name, ordered, 1, 0.85)), None)
        if near is not None:
            raise ToolError(f"{field}: {name!r} was never seen in the usage data; did you mean {near!r}? "
                            "(feature names are event names, case-sensitive)")  # fmt: skip
        warnings.append(f"{field}: {name!r} has not been seen in the usage data yet: every customer counts as not "
                        "using it until it appears")  # fmt: skip
    return warnings
