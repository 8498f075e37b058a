"""Arguments a tool does not take are refused (and nothing runs); argument errors read as one line per field."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client

from events.settings import Settings
from mcp_server.server import build_server

pytestmark = pytest.mark.anyio


async def error_text(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text  # type: ignore[union-attr]


async def test_schemas_say_no_other_arguments(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        tools = (await client.list_tools()).tools
    assert {"register_client", "calculate_health_score", "segment_customers"} <= {t.name for t in tools}
    assert all(t.input_schema.get("additionalProperties") is False for t in tools)


async def test_a_misspelled_argument_is_refused_not_ignored(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        await client.call_tool("register_client", {"client_id": "acme", "client_name": "Acme", "arr": 1000})
        # `asof` for `as_of`: ignored, the score would have been today's while the caller asked for another day.
        text = await error_text(client, "calculate_health_score", {"client_id": "acme", "asof": "2026-01-01"})
        assert text.startswith("asof: not an argument of calculate_health_score (did you mean as_of?)")
        assert "takes client_id, as_of, compare_to" in text

        # A command with one argument too many records nothing.
        text = await error_text(client, "register_client", {"client_id": "globex", "client_name": "Globex", "revenue": 5})
        assert text.startswith("revenue: not an argument of register_client")
        listed = await client.call_tool("list_clients", {})
        assert [c["client_id"] for c in listed.structured_content["items"]] == ["acme"]  # type: ignore[index]

        assert await error_text(client, "verify_audit_trail", {"deep": True}) == (
            "deep: not an argument of verify_audit_trail; verify_audit_trail takes no arguments")


async def test_argument_errors_name_each_field_on_one_line(settings: Settings) -> None:
    async with Client(build_server(settings, background=False)) as client:
        text = await error_text(client, "list_clients", {"limit": "ten"})
        assert text == "limit: Input should be a valid integer, unable to parse string as an integer (got 'ten')"
        text = await error_text(client, "calculate_health_score", {"as_of": "yesterday", "limit": 0})
        assert text.startswith("as_of: Input should be a valid datetime or date")
        assert "(got 'yesterday'); limit: Input should be greater than or equal to 1 (got 0)" in text
        assert "\n" not in text and "pydantic" not in text
