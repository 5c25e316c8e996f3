"""Held calls at scale: N calls held at once in one gateway, each released by one decision.

Used by bench/gateway.py. Starts a real hub (PostgreSQL + Redis when reachable, else SQLite + an
embedded Redis) in a background thread, one in-process gateway with the demo upstream, N agent
calls held together; then an approver approves each request and we time, per request, from the
approve call returning to the agent's call returning its result.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import httpx
from approvals import url_for_database
from gateway import free_port, percentile  # bench/ is on sys.path, run directly or from gateway.py
from mcp import Client

PG_ADMIN = os.environ.get("PRELOOP_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PRELOOP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

POLICY = f"""
version: "1"
servers:
  - name: demo
    command: [{sys.executable}, -m, mcp_gateway.demo_upstream]
approval_policies:
  - name: dba
    teams: [sre]
    timeout: 1h
tools:
  - name: drop_table
    action: require_approval
    approval_policy: dba
defaults: {{unknown_tools: deny, justification: none}}
"""


async def _scratch_postgres() -> str | None:
    name = f"preloop_bench_{uuid.uuid4().hex[:8]}"
    try:
        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url_for_database(name, PG_ADMIN)


async def _drop_postgres(url: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.strip("/")}" WITH (FORCE)')
    finally:
        await conn.close()


PRELOOP = str(Path(sys.executable).parent / "preloop")


class _HubProcess:
    """`preloop serve --no-worker` as its own process, as a deployment runs it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run([PRELOOP, *args], env=self.env, capture_output=True, text=True, check=True, timeout=60)
        return done.stdout.strip()

    def start(self) -> None:
        self.process = subprocess.Popen([PRELOOP, "serve", "--no-worker", "--port", str(self.port)], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the hub did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _make_org(hub: _HubProcess) -> dict[str, str]:
    hub.cli("user", "add", "admin@bench.test", "--role", "admin")
    hub.cli("user", "add", "dev@bench.test", "--role", "viewer")
    hub.cli("user", "add", "alice@bench.test", "--role", "approver", "--team", "sre")
    return {
        "admin": hub.cli("key", "create", "--name", "bench-admin", "--scope", "admin"),
        "agent": hub.cli("key", "create", "--name", "bench-agent", "--user", "dev@bench.test"),
        "approver": hub.cli("key", "create", "--name", "alice", "--user", "alice@bench.test", "--scope", "approver"),
    }


async def _held_round(hub: _HubProcess, keys: dict[str, str], n: int, data_dir: Path) -> list[float]:
    from mcp_gateway.app import Gateway
    from mcp_gateway.config import GatewaySettings

    headers = {"Authorization": f"Bearer {keys['admin']}"}
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=hub.url, timeout=60, limits=limits) as http:
        applied = await http.post("/api/v1/policies", json={"source": POLICY}, headers=headers)
        applied.raise_for_status()
        settings = GatewaySettings(api_url=hub.url, api_key=keys["agent"], hold_window=600,
                                   data_dir=data_dir, startup_timeout=30)
        finished: dict[int, float] = {}
        async with Gateway(settings) as gateway, Client(gateway.server.server) as agent:

            async def held_call(i: int) -> None:
                result = await agent.call_tool("drop_table", {"table": f"t_{i}", "database": "bench"})
                finished[i] = time.perf_counter()
                if result.is_error:
                    raise RuntimeError(f"held call {i} failed: {result.content}")

            async with anyio.create_task_group() as tg:
                # Held in batches (each batch pending before the next starts), so a loaded machine does not
                # time out a thousand creates sent in the same instant; all N are held at once in the end.
                batch = int(os.environ.get("PRELOOP_BENCH_HOLD_BATCH", "100"))
                pending: list[dict[str, Any]] = []
                with anyio.fail_after(600):
                    for start in range(0, n, batch):
                        for i in range(start, min(n, start + batch)):
                            tg.start_soon(held_call, i)
                        while len(pending) < min(n, start + batch):
                            await anyio.sleep(0.5)
                            # The history view (no status filter): the inbox view would compute every
                            # pending card's red flags on each poll.
                            listed = (await http.get("/api/v1/approvals", params={"limit": 1000},
                                                     headers=headers)).json()
                            pending = [item for item in listed if item["status"] == "pending"]
                print(f"  {len(pending)} calls held at once; approving one by one", file=sys.stderr)
                decided_at: dict[int, float] = {}
                approver = {"Authorization": f"Bearer {keys['approver']}"}
                # One decision at a time by default, as people decide; more to stress the hub.
                sem = anyio.Semaphore(int(os.environ.get("PRELOOP_BENCH_DECIDERS", "1")))

                async def approve(item: dict[str, Any]) -> None:
                    async with sem:
                        index = int(item["arguments"]["table"].split("_", 1)[1])
                        response = await http.post(f"/api/v1/approvals/{item['id']}/approve", json={},
                                                   headers=approver)
                        decided_at[index] = time.perf_counter()
                        response.raise_for_status()

                async with anyio.create_task_group() as deciders:
                    for item in pending:
                        deciders.start_soon(approve, item)
        return [(finished[i] - decided_at[i]) * 1000 for i in decided_at if i in finished]


def run_held(n: int = 1000) -> tuple[int, float, float]:
    """Return (held, verdict_p50_ms, verdict_p99_ms)."""
    pg = asyncio.run(_scratch_postgres())
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PRELOOP_DATA_DIR": tmp, "PRELOOP_DEMO": "false", "PRELOOP_LOG_LEVEL": "warning"}
        if pg:
            env["PRELOOP_DATABASE_URL"] = pg
            env["PRELOOP_REDIS_URL"] = REDIS_URL
        hub = _HubProcess(env)
        keys = _make_org(hub)
        hub.start()
        try:
            samples = asyncio.run(_held_round(hub, keys, n, Path(tmp) / "gateway"))
        finally:
            hub.stop()
            if pg:
                asyncio.run(_drop_postgres(pg))
    print(
        f"held: {len(samples)} calls, verdict-to-result p50 {percentile(samples, 0.5):.1f} ms, "
        f"p99 {percentile(samples, 0.99):.1f} ms ({'postgresql' if pg else 'sqlite'})",
        file=sys.stderr,
    )
    return len(samples), percentile(samples, 0.5), percentile(samples, 0.99)


if __name__ == "__main__":
    held, p50, p99 = run_held(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    print(f"RESULT held={held} held_verdict_p50_ms={p50:.1f} held_verdict_p99_ms={p99:.1f}")
