"""A real MCP stdio server for the fault tests: `deploy` appends one line per run to the file named by
argv[1] (so a test can count how often a call really ran), `read_logs` answers without side effects."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

RUNS = sys.argv[1]

TOOLS = [
    types.Tool(
        name="deploy",
        description="Deploys (records one line per run).",
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    ),
    types.Tool(
        name="read_logs",
        description="Reads logs.",
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
]


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    args = dict(params.arguments or {})
    if params.name == "deploy":
        with open(RUNS, "a") as runs:
            runs.write(json.dumps(args) + "\n")
        return types.CallToolResult(content=[types.TextContent(text=f"deployed {args}")])
    return types.CallToolResult(content=[types.TextContent(text=f"logs {args}")])


server = Server("ops", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
