"""`preloop worker --metrics HOST:PORT`: the process that fires deadlines shows their lag and decisions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx

from backend.settings import Settings
from tests.helpers import free_port
from tests.integration.approvals.support import apply_policy, create, process_env, stop_process
from tests.integration.observability.support import sample


async def test_worker_metrics_show_the_deadline_it_fired(client: Any, org: Any, settings: Settings) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "ping")  # approval policy `short`: times out after 1 s
    port = free_port()
    env = process_env(settings, PRELOOP_SWEEP_SECONDS="1")
    command = [str(Path(sys.executable).parent / "preloop"), "worker", "--metrics", f"127.0.0.1:{port}"]
    process = await anyio.open_process(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
            with anyio.fail_after(60):
                while True:
                    try:
                        text = (await http.get("/metrics")).text
                    except httpx.TransportError:
                        text = ""
                    if sample(text, "preloop_deadline_lag_seconds_count", kind="expiry") >= 1:
                        break
                    await anyio.sleep(0.2)
        assert sample(text, "preloop_decisions_total", outcome="expired") == 1
        assert sample(text, "preloop_time_to_decision_seconds_count", outcome="expired") == 1
        assert 0 <= sample(text, "preloop_deadline_lag_seconds_sum", kind="expiry") < 30
        row = (await client.get(f"/api/v1/approvals/{request['id']}",
                                headers={"Authorization": f"Bearer {org.agent_token}"})).json()
        assert row["status"] == "expired"
    finally:
        await stop_process(process)


def test_a_bad_metrics_address_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "PRELOOP_REDIS_URL": "redis://127.0.0.1:6379/6", "PRELOOP_DATA_DIR": str(tmp_path)}
    done = subprocess.run([str(Path(sys.executable).parent / "preloop"), "worker", "--metrics", "nine"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: --metrics 'nine' must look like HOST:PORT, e.g. 127.0.0.1:9091"
