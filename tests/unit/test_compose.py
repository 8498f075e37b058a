"""compose.yaml parses, names every service the README mentions, and runs commands that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from mcp_server.cli import build_parser

ROOT = Path(__file__).parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def readme_services() -> set[str]:
    section = (ROOT / "README.md").read_text().split("## Running with compose", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(postgres|kafka|server|worker)`", section))


def test_every_service_the_readme_names_is_defined_with_a_health_check() -> None:
    services = compose()["services"]
    named = readme_services()
    assert named == {"postgres", "kafka", "server", "worker"}
    for name in named:
        assert name in services
        assert "healthcheck" in services[name], name
        assert services[name]["image"], name


def test_app_services_run_existing_cs_commands() -> None:
    parser = build_parser()
    for name in ("server", "worker"):
        shell = compose()["services"][name]["command"][-1]
        cs_part = shell.split("exec ", 1)[1]
        argv = shlex.split(cs_part)
        assert argv[0] == "cs"
        parsed = parser.parse_args(argv[1:])  # raises SystemExit if the command or a flag does not exist
        assert parsed.func.__name__ in {"cmd_serve", "cmd_worker"}


@pytest.mark.parametrize("image", ["postgres:17", "apache/kafka:3.9.0", "python:3.11-slim"])
def test_images_are_pinned_official_tags(image: str) -> None:
    images = {s["image"] for s in compose()["services"].values()}
    assert image in images


def test_volumes_keep_state() -> None:
    doc = compose()
    assert {"pg-data", "kafka-data", "app-data"} <= set(doc["volumes"])
