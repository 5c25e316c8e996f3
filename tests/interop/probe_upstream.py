"""A real MCP stdio server for gateway tests: echoes what it receives and can change its tool list."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server

CALLS = {"count": 0}
EXTRA: list[types.Tool] = []

BASE = [
    types.Tool(
        name="show_args",
        description="Returns exactly the arguments it received.",
        input_schema={"type": "object", "properties": {"value": {"type": "string"}}},
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name="count_calls",
        description="How many calls of any tool this process has served.",
        input_schema={"type": "object", "properties": {}},
    ),
    types.Tool(
        name="lookup",
        description="Looks a value up; declares an outputSchema (as filesystem and memory tools do).",
        input_schema={"type": "object", "properties": {"value": {"type": "string"}}},
        output_schema={
            "type": "object",
            "properties": {"value": {"type": "string"}},
            "required": ["value"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="add_tool",
        description="Registers a new tool and announces notifications/tools/list_changed.",
        input_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    ),
]


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[*BASE, *EXTRA])


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    CALLS["count"] += 1
    args = dict(params.arguments or {})
    if params.name == "add_tool":
        EXTRA.append(types.Tool(name=str(args["name"]), input_schema={"type": "object"}))
        await ctx.session.send_tool_list_changed()
        return types.CallToolResult(content=[types.TextContent(text="added")])
    if params.name == "count_calls":
        return types.CallToolResult(
            content=[types.TextContent(text=str(CALLS["count"]))], structured_content={"count": CALLS["count"]}
        )
    if params.name == "lookup":
        value = str(args.get("value", ""))
        return types.CallToolResult(content=[types.TextContent(text=value)], structured_content={"value": value})
    return types.CallToolResult(content=[types.TextContent(text="ok")], structured_content={"received": args})


server = Server("probe", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options(NotificationOptions(tools_changed=True)))


if __name__ == "__main__":
    print("probe upstream starting", file=sys.stderr)
    anyio.run(main)
