"""What every tool shares: the services from the lifespan, the caller, error translation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from events.commands import CommandMeta
from events.errors import CSError
from mcp_server.services import Services
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


def none_if_empty(value: Any) -> Any:
    return None if value in ("", None) else value
