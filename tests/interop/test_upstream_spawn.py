"""Stdio upstreams: `preloop …` runs with this interpreter; a missing command fails at once, named."""

from __future__ import annotations

import os
import sys

import anyio
import pytest

from mcp_gateway.upstreams import CommandNotFoundError, UpstreamPool, resolve_command
from policies import ServerConfig

pytestmark = pytest.mark.interop


def test_preloop_commands_run_with_the_running_interpreter() -> None:
    assert resolve_command("demo", ["preloop", "demo-upstream"]) == [
        sys.executable, "-m", "backend.cli", "demo-upstream",
    ]


async def test_demo_upstream_starts_without_the_venv_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    monkeypatch.setenv("PATH", path or "/usr/bin:/bin")
    pool = UpstreamPool()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            await tg.start(pool.run, [ServerConfig(name="demo", command=["preloop", "demo-upstream"])])
        assert {"refund", "read_logs", "drop_table"} <= set(pool.routes)
        result = await pool.upstreams["demo"].request(
            "tools/call", {"name": "refund", "arguments": {"charge_id": "ch_1", "amount": 250}}
        )
        assert result["structuredContent"]["status"] == "succeeded"
        tg.cancel_scope.cancel()


async def test_missing_command_is_reported_at_once_naming_server_and_command() -> None:
    pool = UpstreamPool()
    async with anyio.create_task_group() as tg:
        # fail_after(5): without the check the pool waits 30 s for a session that can never start.
        with anyio.fail_after(5):
            await tg.start(pool.run, [ServerConfig(name="billing", command=["no-such-mcp-server", "--stdio"])])
            with pytest.raises(CommandNotFoundError) as caught:
                await pool.upstreams["billing"].request("tools/list", None)
        message = caught.value.message
        assert "'billing'" in message and "'no-such-mcp-server'" in message and "not on PATH" in message
        assert pool.broken_upstreams() == [message]
        tg.cancel_scope.cancel()
