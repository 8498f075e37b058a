"""A lean MCP client over stdio for latency figures: JSON-RPC lines on the server's pipes.

The official client (``mcp.Client``) spends about 2 ms of CPU per call on this machine's
2 cores, as much as the server it measures: it re-validates every structured result against the
tool's JSON Schema (``jsonschema``, pure Python), builds pydantic models of each message, and hops
between anyio tasks. Timed around it, a server's answer latency mostly measures the client on a
loaded 2-core machine. This client does what any MCP client must and nothing more, as
``bench.http_load`` does for the webhooks: it spawns the server exactly as ``stdio_client`` does
(same command, environment and working directory), speaks the protocol revision the official
client speaks (the per-request ``_meta`` envelope; ``server/discover`` first), writes one line
per request and reads lines until the answer with the request's id (notifications are skipped),
and decodes the answer as JSON. A JSON-RPC error or a tool error (``isError``) raises.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from typing import Any

from mcp import StdioServerParameters
from mcp.client.stdio import get_default_environment

PROTOCOL_VERSION = "2026-07-28"
MAX_LINE = 64 * 1024 * 1024
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "cs-bench-raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class RawCallFailed(RuntimeError):
    pass


class RawStdioClient:
    """``async with RawStdioClient(params) as client: result = await client.call_tool(name, args)``"""

    def __init__(self, params: StdioServerParameters) -> None:
        self._params = params
        self._ids = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> RawStdioClient:
        self._proc = await asyncio.create_subprocess_exec(
            self._params.command, *self._params.args, env={**get_default_environment(), **(self._params.env or {})},
            cwd=self._params.cwd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MAX_LINE,
        )  # fmt: skip
        await self.request("server/discover", {})
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # end of input: the server's stdio loop ends and it exits
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except asyncio.TimeoutError:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        request_id = next(self._ids)
        line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": META}})
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise RawCallFailed(f"{method}: the server closed its output (exit code {proc.returncode})")
            message = json.loads(raw)
            if message.get("id") != request_id:
                continue  # a notification or a log line for the client
            if "error" in message:
                raise RawCallFailed(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's structured result; raises on a tool error."""
        result = await self.request("tools/call", {"name": name, "arguments": arguments})
        structured = result.get("structuredContent")
        if result.get("isError") or not isinstance(structured, dict):
            text = " ".join(block.get("text", "") for block in result.get("content", []))
            raise RawCallFailed(f"{name} failed: {text or result}")
        return structured
