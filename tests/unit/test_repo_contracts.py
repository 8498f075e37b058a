"""Documents that must say what the code does: README's Quick start, docs/tools.md."""

from __future__ import annotations

import re
from pathlib import Path

import anyio

from events.settings import Settings
from mcp_server.dashboard import tools_markdown
from mcp_server.server import build_server

ROOT = Path(__file__).parents[2]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def test_quick_start_is_two_commands_main_job_then_tests() -> None:
    first, second = quick_start_commands()
    assert "cs demo" in first and "pytest" in second


def test_ci_runs_the_readme_test_command() -> None:
    assert "sed -n 2p" in (ROOT / ".ci/run").read_text()


def test_tools_doc_is_generated_from_the_live_registry(tmp_path: Path) -> None:
    tools = anyio.run(build_server(Settings(data_dir=tmp_path)).list_tools)
    assert (ROOT / "docs/tools.md").read_text() == tools_markdown(tools)
