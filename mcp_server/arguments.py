"""Tool arguments the caller got wrong are refused, in one readable line per field.

The SDK validates a tool's arguments with the pydantic model it derives from the tool's
signature, and that model ignores keys it does not know: ``calculate_health_score`` called with
``asof`` (for ``as_of``) answered as of now, with no sign that the instant asked for was never
read. :class:`StrictToolsServer` refuses any argument a tool does not take, naming it, the nearest
one the tool takes and the full list, before the tool runs (so nothing is read or recorded), and
publishes every input schema with ``additionalProperties: false`` so clients can know it up front.

The SDK's own validation errors (a wrong type, a value out of range) reach the caller as
pydantic's multi-line report with a documentation link per error; they are rewritten as
``field: what is expected (got value)``, one clause per error, as the tools' own errors read.
"""

from __future__ import annotations

import difflib
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, InputRequiredResult
from mcp.types import Tool as MCPTool
from pydantic import ValidationError

_ECHO_LIMIT = 60  # characters of a rejected value echoed back to the caller (its own input)


def unknown_arguments(tool: str, unknown: list[str], accepted: list[str]) -> str:
    """The message for arguments ``tool`` does not take (``accepted``: those it does, in order)."""
    clauses = []
    for name in unknown:
        near = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
        clauses.append(f"{name}: not an argument of {tool}" + (f" (did you mean {near[0]}?)" if near else ""))
    takes = ", ".join(accepted) if accepted else "no arguments"
    return "; ".join(clauses) + f"; {tool} takes {takes}"


def readable(error: ValidationError) -> str:
    """``error`` as ``field: message (got value)`` clauses, without pydantic's type codes and links."""
    clauses = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        clause = f"{where}: {item['msg']}"
        value = item.get("input")
        if item["type"] != "missing" and (value is None or isinstance(value, (str, int, float, bool))):
            shown = repr(value)
            clause += f" (got {shown[:_ECHO_LIMIT] + '…' if len(shown) > _ECHO_LIMIT else shown})"
        clauses.append(clause)
    return "; ".join(clauses)


class StrictToolsServer(MCPServer[Any]):
    """An :class:`MCPServer` whose tools refuse arguments they do not take (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accepted: dict[str, list[str]] = {}

    async def list_tools(self) -> list[MCPTool]:
        tools = await super().list_tools()
        for tool in tools:
            self._accepted[tool.name] = list(tool.input_schema.get("properties", {}))
        return [t.model_copy(update={"input_schema": {**t.input_schema, "additionalProperties": False}}) for t in tools]

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        if name not in self._accepted:
            await self.list_tools()  # tools are registered before serving; read their arguments once
        accepted = self._accepted.get(name)
        if accepted is not None:  # an unknown tool is the SDK's to report
            unknown = [key for key in arguments if key not in accepted]
            if unknown:
                raise ToolError(unknown_arguments(name, unknown, accepted))
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(readable(exc.__cause__)) from exc.__cause__
            raise
