"""Policy enforcement through the gateway against real upstream processes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.subscriptions import ToolsListChanged

from mcp_gateway.spool import AuditSpool
from tests.helpers import structured
from tests.interop.conftest import PROBE, PYTHON, child_pids, closed_port_url, cmdline, running_gateway, serving_http

pytestmark = pytest.mark.interop

PROBE_POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
approval_policies:
  - name: ops
    approvers: [ops@example.com]
tools:
  - name: show_args
    justification: required
    rules:
      - {{when: "args.value == 'held'", action: require_approval, approval_policy: ops}}
      - {{when: "args.value == 'forbidden'", action: deny, message: "forbidden values are never sent"}}
      - {{action: allow}}
  - name: count_calls
    action: allow
  - name: add_tool
    action: allow
defaults: {{unknown_tools: deny, justification: none}}
"""


async def test_justification_is_added_required_and_stripped(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, Client(gw.server.server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        schema = tools["show_args"].input_schema
        assert schema["properties"]["justification"]["type"] == "string"
        assert "justification" in schema["required"]
        assert "justification" not in tools["count_calls"].input_schema.get("properties", {})

        missing = await client.call_tool("show_args", {"value": "x"})
        assert missing.is_error
        assert structured(missing)["status"] == "justification_required"

        ok = await client.call_tool("show_args", {"value": "x", "justification": "checking the gateway"})
        assert not ok.is_error
        assert structured(ok) == {"received": {"value": "x"}}  # stripped before forwarding


async def test_deny_returns_the_rules_message_and_never_reaches_upstream(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, Client(gw.server.server) as client:
        denied = await client.call_tool("show_args", {"value": "forbidden", "justification": "try"})
        assert denied.is_error
        body = structured(denied)
        assert body["status"] == "denied_by_policy"
        assert body["message"] == "forbidden values are never sent"
        assert "forbidden values are never sent" in denied.content[0].text  # type: ignore[union-attr]
        count = await client.call_tool("count_calls", {})
        assert structured(count) == {"count": 1}  # only count_calls itself reached the upstream
        records = gw.spool.pending()
        assert [r["decision"] for r in records] == ["deny", "allow"]
        ids = [r["event_id"] for r in records]
        assert len(set(ids)) == len(ids) and all(ids)  # distinct, so the hub can deduplicate resends


async def test_unknown_tool_follows_the_policy_default(tmp_path: Path) -> None:
    # `add_tool` adds `surprise`, a tool the policy does not mention: defaults.unknown_tools is deny.
    policy = PROBE_POLICY.replace("  - name: add_tool\n    action: allow\n", "")
    policy = policy.replace("tools:\n", "tools:\n  - name: add_tool\n    action: allow\n", 1)
    async with running_gateway(tmp_path, policy) as gw, Client(gw.server.server) as client:
        await client.call_tool("add_tool", {"name": "surprise"})
        with anyio.fail_after(10):
            while gw.pool.route("surprise") is None:
                await gw.pool.tools_refreshed.wait()
        result = await client.call_tool("surprise", {})
        assert result.is_error
        assert structured(result)["status"] == "denied_by_policy"
        missing = await client.call_tool("no_such_tool", {})
        assert structured(missing)["status"] == "unknown_tool"


async def test_held_call_fails_closed_when_the_api_is_unreachable(tmp_path: Path) -> None:
    async with (
        running_gateway(tmp_path, PROBE_POLICY, api_url=closed_port_url()) as gw,
        Client(gw.server.server) as client,
    ):
        held = await client.call_tool("show_args", {"value": "held", "justification": "needs a human"})
        assert held.is_error
        assert structured(held)["status"] == "api_unavailable"
        assert "NOT run" in held.content[0].text  # type: ignore[union-attr]
        # Allowed calls keep working from the snapshot while the hub is down.
        allowed = await client.call_tool("show_args", {"value": "fine", "justification": "routine"})
        assert structured(allowed) == {"received": {"value": "fine"}}
        count = await client.call_tool("count_calls", {})
        assert structured(count) == {"count": 2}  # the held call never reached the upstream


async def test_audit_spool_survives_a_restart_and_is_resent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_gateway(tmp_path, PROBE_POLICY, data_dir=data_dir) as gw, Client(gw.server.server) as client:
        for i in range(3):
            await client.call_tool("show_args", {"value": f"v{i}", "justification": "spool test"})
        ids = [r["event_id"] for r in gw.spool.pending()]
    assert len(ids) == 3

    # A new process (here: a new spool on the same directory) still holds every record...
    spool = AuditSpool(data_dir)
    assert [r["event_id"] for r in spool.pending()] == ids

    # ...and delivers them once the hub answers; a failed batch stays spooled.
    received: list[dict[str, Any]] = []

    async def hub_down(batch: Any) -> None:
        from mcp_gateway.errors import ApiUnavailableError

        raise ApiUnavailableError("hub down")

    async def hub_up(batch: Any) -> None:
        received.extend(batch)

    from mcp_gateway.errors import ApiUnavailableError

    with pytest.raises(ApiUnavailableError):
        await spool.flush(hub_down)
    assert len(spool.pending()) == 3
    assert await spool.flush(hub_up) == 3
    assert [r["event_id"] for r in received] == ids
    assert spool.pending() == []
    assert json.loads(spool.offset_path.read_text()) == spool.path.stat().st_size
    spool.close()


async def test_stdio_upstream_is_restarted_after_it_dies(tmp_path: Path) -> None:
    before = child_pids()
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, Client(gw.server.server) as client:
        probe_pids = [p for p in child_pids() - before if str(PROBE) in cmdline(p)]
        assert len(probe_pids) == 1
        upstream = gw.pool.upstreams["probe"]
        generation = upstream.generation
        await client.call_tool("count_calls", {})
        os.kill(probe_pids[0], signal.SIGKILL)
        with anyio.fail_after(15):
            await upstream.wait_for_generation(generation + 1)
        result = await client.call_tool("count_calls", {})
        assert structured(result) == {"count": 1}  # a fresh process answered


async def test_list_changed_reaches_legacy_and_modern_clients(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, serving_http(gw) as url:
        got_legacy = anyio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                got_legacy.set()

        async with Client(url, mode="legacy", message_handler=on_message) as legacy, Client(url) as modern:
            await legacy.list_tools()
            async with modern.listen(tools_list_changed=True) as events:
                await modern.call_tool("add_tool", {"name": "fresh_tool"})
                with anyio.fail_after(10):
                    await got_legacy.wait()
                    event = await events.__anext__()
                assert isinstance(event, ToolsListChanged)
            names = [t.name for t in (await legacy.list_tools()).tools]
            assert "fresh_tool" in names


async def test_gateway_over_stdio_for_an_agent(tmp_path: Path) -> None:
    from mcp.client.stdio import StdioServerParameters

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(PROBE_POLICY)
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "mcp_gateway.cli",
            "--stdio",
            "--policy",
            str(policy_file),
            "--data-dir",
            str(tmp_path / "d"),
            "--api-url",
            closed_port_url(),
        ],
        cwd=str(Path(__file__).parents[2]),
    )
    for mode in ("legacy", "auto"):
        async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"show_args", "count_calls", "preloop_approval_status"} <= names
            ok = await client.call_tool("show_args", {"value": "v", "justification": "stdio agent"})
            assert structured(ok) == {"received": {"value": "v"}}
            denied = await client.call_tool("show_args", {"value": "forbidden", "justification": "x"})
            assert structured(denied)["status"] == "denied_by_policy"
