"""`cs serve`'s stdio transport (mcp_server/stdio.py) in a real process, spoken to as a client
would: JSON-RPC lines on its stdin, answers read from its stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.raw_stdio import META

REPO = Path(__file__).resolve().parents[2]
LIMIT = 4096  # the transport's line limit in the served process, small enough to overrun here

# A server whose tool writes to stdout itself and through a child process: without the
# diversion both would land on the protocol stream. It reports whether fds 0 and 1 came back
# as they were (same file, blocking) once serving ended.
SERVER = f"""
import os, subprocess, sys
from mcp.server.mcpserver import MCPServer
from mcp_server import stdio
from mcp_server.logs import configure_logging

configure_logging("INFO")
stdio.MAX_LINE = {LIMIT}
server = MCPServer(name="transport-test")

@server.tool()
def shout(text: str) -> str:
    print("stray print", text, flush=True)
    subprocess.run([sys.executable, "-c", "print('child output')"], check=True)
    return text.upper()

before = [(os.fstat(fd).st_ino, os.get_blocking(fd)) for fd in (0, 1)]
stdio.run_stdio(server)
after = [(os.fstat(fd).st_ino, os.get_blocking(fd)) for fd in (0, 1)]
sys.stderr.write(f"RESTORED {{before == after}}\\n")
"""


def line(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": META}}).encode() + b"\n"


def answers(stdout: bytes) -> dict[int, dict[str, Any]]:
    """Every line on stdout must be a JSON-RPC message; the answers by id."""
    messages = [json.loads(raw) for raw in stdout.splitlines() if raw.strip()]
    assert all(m.get("jsonrpc") == "2.0" for m in messages), messages
    return {m["id"]: m for m in messages if "id" in m}


def shout_text(answer: dict[str, Any]) -> str:
    assert "result" in answer and not answer["result"].get("isError"), answer
    return str(answer["result"]["content"][0]["text"])


def test_pipes_carry_only_the_protocol_and_skip_an_overlong_line() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(line(1, "server/discover", {}))
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1  # answered while the input stays open
        proc.stdin.write(line(2, "tools/call", {"name": "shout", "arguments": {"text": "x" * (2 * LIMIT)}}))
        proc.stdin.write(line(3, "tools/call", {"name": "shout", "arguments": {"text": "after"}}))
        proc.stdin.flush()
        third = proc.stdout.readline()  # the next answer: the overlong request's remains get none
        out, err = proc.communicate(timeout=60)  # end of input: the server stops
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert shout_text(json.loads(third)) == "AFTER" and json.loads(third)["id"] == 3
    assert answers(out) == {}  # nothing else, and nothing but JSON-RPC lines
    log = err.decode()
    assert "stdio.line_too_long" in log
    assert "stray print after" in log and "child output" in log  # diverted to stderr
    assert "RESTORED True" in log
    assert "stdio.sdk_transport" not in log  # pipes: this module's transport served


def test_stdin_that_is_not_a_pipe_is_served_by_the_sdk_transport() -> None:
    done = subprocess.run([sys.executable, "-c", SERVER], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b""
    log = done.stderr.decode()
    assert "stdio.sdk_transport" in log and "RESTORED True" in log
