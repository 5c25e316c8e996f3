"""`make run` in one process: embedded SQLite + Redis + worker + demo + gateway, used like a newcomer would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
from mcp import Client

from tests.helpers import free_port, wait_for_health

PRELOOP = str(Path(sys.executable).parent / "preloop")


def test_first_start_creates_the_demo_and_serves_the_whole_loop(tmp_path: Path) -> None:
    port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRELOOP_")}
    env.update({"PRELOOP_DATA_DIR": str(tmp_path / "data"), "PRELOOP_LOG_FORMAT": "json"})
    hub = subprocess.Popen(
        [PRELOOP, "serve", "--port", str(port), "--gateway-port", str(gateway_port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        health = wait_for_health(port, hub)
        assert health["database"] == {"ok": True, "kind": "sqlite"}
        assert health["redis"] == {"ok": True, "embedded": True}
        assert (tmp_path / "data" / "preloop.db").exists()
        key = (tmp_path / "data" / "demo-agent.key").read_text().strip()
        active = httpx.get(f"http://127.0.0.1:{port}/api/v1/policies/active",
                           headers={"Authorization": f"Bearer {key}"}).json()
        assert active["version"] == 1 and "deploy_production" in active["source"]

        async def agent() -> tuple[set[str], str]:
            with anyio.fail_after(60):
                while True:  # the gateway starts right after the hub
                    try:
                        await (await anyio.connect_tcp("127.0.0.1", gateway_port)).aclose()
                        break
                    except OSError:
                        await anyio.sleep(0.2)
                async with Client(f"http://127.0.0.1:{gateway_port}/mcp") as client:
                    tools = {t.name for t in (await client.list_tools()).tools}
                    result = await client.call_tool("read_logs", {"service": "checkout-api", "lines": 3})
                    assert not result.is_error
                    return tools, result.content[0].text  # type: ignore[union-attr]

        tools, logs = anyio.run(agent)
        assert {"deploy_production", "drop_table", "refund", "scale_service", "read_logs",
                "preloop_approval_status"} <= tools
        assert logs.count("checkout-api") == 3
    finally:
        hub.terminate()
        out, err = hub.communicate(timeout=30)
    assert hub.returncode == 0  # SIGTERM runs the same cleanup as Ctrl-C
    assert '"msg": "in-process worker started"' in err, err[-2000:]  # one process: API and worker
    password = re.search(r"password: (\S+)", out)
    assert password, out
    assert "login:    admin@demo.preloop.dev" in out
    second = re.search(r"second approver \(for quorum-2 policies\): sre@demo.preloop.dev / (\S+)", out)
    assert second, out
    assert f"MCP gateway:  http://127.0.0.1:{gateway_port}/mcp" in out  # in the box, printed last

    # Second start: the demo is not created again and the password is not printed again.
    again = subprocess.Popen([PRELOOP, "serve", "--port", str(port), "--gateway-port", "0"], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(port, again)
        login = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/login",
                           json={"email": "admin@demo.preloop.dev", "password": password.group(1)})
        assert login.status_code == 201, login.text
        sre_login = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/login",
                               json={"email": "sre@demo.preloop.dev", "password": second.group(1)})
        assert sre_login.status_code == 201, sre_login.text
    finally:
        again.terminate()
        out2, _ = again.communicate(timeout=30)
    assert "password:" not in out2
