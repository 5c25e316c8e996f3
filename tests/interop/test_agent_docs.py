"""Every config block in docs/agents.md parses, and each one starts the gateway the same way."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

DOC = Path(__file__).parents[2] / "docs" / "agents.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(DOC.read_text()) if kind == lang]


def test_json_blocks_parse_as_mcp_server_maps() -> None:
    found = blocks("json")
    assert len(found) >= 4
    for body in found:
        entry: dict[str, Any] = json.loads(body)["mcpServers"]["preloop"]
        if "command" in entry:
            assert entry["command"] == "preloop"
            assert entry["args"][:2] == ["gateway", "--stdio"]
            assert set(entry["env"]) == {"PRELOOP_API_URL", "PRELOOP_API_KEY"}
        else:
            assert entry["url"].endswith("/mcp")


def test_codex_toml_parses() -> None:
    (body,) = blocks("toml")
    server = tomllib.loads(body)["mcp_servers"]["preloop"]
    assert server["command"] == "preloop"
    assert server["args"] == ["gateway", "--stdio"]
    assert server["env"]["PRELOOP_API_KEY"].startswith("pl_")


def test_claude_commands_split_into_valid_argv() -> None:
    commands = [shlex.split(line) for body in blocks("bash") for line in body.strip().splitlines()]
    assert len(commands) == 2
    stdio, http = commands
    assert stdio[:3] == ["claude", "mcp", "add"]
    assert stdio[stdio.index("--") + 1 :] == ["preloop", "gateway", "--stdio"]
    assert http[-1].startswith("http://") and http[-1].endswith("/mcp")


def test_python_snippet_compiles() -> None:
    (body,) = blocks("python")
    compile(body, "agents.md", "exec", flags=0x2000)  # PyCF_ALLOW_TOP_LEVEL_AWAIT
