"""Fault tests: real `preloop serve`, `preloop worker` and `preloop gateway` processes on loopback,
PostgreSQL + Redis (the test's own db), a real SMTP server where mail matters.

Each test gets a freshly truncated, migrated PostgreSQL database with one org (an agent key owned
by a viewer, a second agent key, approver keys for alice and carol) and a policy holding `deploy`
for alice's approval, allowing `read_logs`, and holding `page` for alice with an escalation to carol
after a few seconds. The policy's MCP server is `ops_upstream.py`, which logs every `deploy` it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import redis.asyncio as redis_async

from tests.conftest import _truncate_postgres
from tests.helpers import free_port

UPSTREAM = Path(__file__).with_name("ops_upstream.py")
ESCALATE_AFTER = 10
"""Seconds after creation at which a `page` request escalates to carol."""

POLICY = """
version: "1"
name: resilience
servers:
  - name: ops
    command: [{python}, {upstream}, {runs}]
approval_policies:
  - name: ops
    approvers: [alice@res.test]
    quorum: 1
    timeout: 1h
    channels: [web]
  - name: escalating
    approvers: [alice@res.test]
    quorum: 1
    timeout: 1h
    channels: [email]
    escalation:
      - {{after: {escalate}s, to: [carol@res.test]}}
tools:
  - name: deploy
    action: require_approval
    approval_policy: ops
  - name: read_logs
    action: allow
  - name: page
    action: require_approval
    approval_policy: escalating
defaults:
  unknown_tools: deny
  justification: none
"""


PRELOOP = str(Path(sys.executable).parent / "preloop")
HEARTBEAT = "preloop:worker:heartbeat"


class Process:
    """One `preloop ...` child process with its log file; `start` waits until `/health` answers 200."""

    name = "process"

    def __init__(self, command: list[str], env: dict[str, str], log: Path, health_url: str | None) -> None:
        self.command, self.env, self.log, self.health_url = command, env, log, health_url
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> Self:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)
        if self.health_url is None:
            return self
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as probe:
            while True:
                try:
                    if (await probe.get(self.health_url)).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"{self.name} process did not start: {self.log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def _hub_env(database_url: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PRELOOP_DATABASE_URL": database_url,
        "PRELOOP_REDIS_URL": redis_url,
        "PRELOOP_DATA_DIR": str(data_dir),
        "PRELOOP_DEMO": "false",
        "PRELOOP_SECRET_KEY": "resilience",
        "PRELOOP_LOG_LEVEL": "warning",
    }


class ApiProcess(Process):
    """One `preloop serve --no-worker` process."""

    name = "API"

    def __init__(self, database_url: str, redis_url: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**_hub_env(database_url, redis_url, data_dir), "PRELOOP_PORT": str(self.port)}
        log = data_dir / f"api-{self.port}.log"
        super().__init__([PRELOOP, "serve", "--no-worker"], env, log, f"{self.url}/health")


class WorkerProcess(Process):
    """One `preloop worker` process (deadlines, sweeps, notifications), sweeping every second."""

    name = "worker"

    def __init__(self, database_url: str, redis_url: str, data_dir: Path, smtp_port: int | None, n: int) -> None:
        env = {**_hub_env(database_url, redis_url, data_dir), "PRELOOP_SWEEP_SECONDS": "1"}
        if smtp_port is not None:
            env |= {"PRELOOP_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "PRELOOP_SMTP_FROM": "preloop@res.test"}
        super().__init__([PRELOOP, "worker"], env, data_dir / f"worker-{n}.log", None)


class GatewayProcess(Process):
    """One `preloop gateway --http` process acting as the agent key, its spool in `data_dir`."""

    name = "gateway"

    def __init__(self, api_url: str, key: str, data_dir: Path, *, hold_window: float, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.data_dir = data_dir
        env = {**os.environ, "PRELOOP_API_URL": api_url, "PRELOOP_API_KEY": key,
               "PRELOOP_GATEWAY_DATA_DIR": str(data_dir), "PRELOOP_GATEWAY_AGENT_KEY_TTL": "60"}
        command = [PRELOOP, "gateway", "--http", f"127.0.0.1:{self.port}", "--hold-window", str(hold_window)]
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(command, env, data_dir / f"gateway-{self.port}.log", f"http://127.0.0.1:{self.port}/health")


class Cluster:
    """API processes sharing one PostgreSQL database and one Redis db; clean shutdown at the end."""

    def __init__(self, database_url: str, redis_url: str, data_dir: Path, tokens: dict[str, str]) -> None:
        self.database_url, self.redis_url, self.data_dir, self.tokens = database_url, redis_url, data_dir, tokens
        self.processes: list[Process] = []
        #: One line per `deploy` the upstream really ran.
        self.runs = data_dir / "deploy-runs.jsonl"

    async def api(self, database_url: str | None = None) -> ApiProcess:
        api = ApiProcess(database_url or self.database_url, self.redis_url, self.data_dir)
        self.processes.append(api)
        return await api.start()

    async def worker(self, smtp_port: int | None = None, *, ready: bool = True) -> WorkerProcess:
        """A worker; with `ready`, returned once it has started up (its heartbeat key is written)."""
        worker = WorkerProcess(self.database_url, self.redis_url, self.data_dir, smtp_port, len(self.processes))
        self.processes.append(worker)
        redis = redis_async.Redis.from_url(self.redis_url)
        try:
            await redis.delete(HEARTBEAT)
            await worker.start()
            deadline = time.monotonic() + 60
            while ready and not await redis.exists(HEARTBEAT):
                assert worker.process is not None and worker.process.poll() is None, worker.log_text()[-2000:]
                assert time.monotonic() < deadline, "the worker did not start"
                await asyncio.sleep(0.1)
        finally:
            await redis.aclose()
        return worker

    async def gateway(
        self, api: ApiProcess, *, key: str = "agent", hold_window: float = 20, name: str = "gw", port: int | None = None
    ) -> GatewayProcess:
        gateway = GatewayProcess(api.url, self.tokens[key], self.data_dir / name, hold_window=hold_window, port=port)
        self.processes.append(gateway)
        await gateway.start()
        deadline = time.monotonic() + 30  # serving the hub's policy, not a cached or missing one
        async with httpx.AsyncClient(timeout=2) as probe:
            while (await probe.get(str(gateway.health_url))).json()["status"] != "ok":
                assert time.monotonic() < deadline, gateway.log_text()[-2000:]
                await asyncio.sleep(0.2)
        return gateway

    def deploy_runs(self) -> list[dict[str, Any]]:
        if not self.runs.exists():
            return []
        return [json.loads(line) for line in self.runs.read_text().splitlines() if line.strip()]

    @asynccontextmanager
    async def database(self) -> AsyncIterator[None]:
        """This test process connected to the cluster's database (to read rows and audit events)."""
        from backend import db

        engine = await db.connect(self.database_url)
        try:
            yield
        finally:
            await db.disconnect(engine)

    def client(self, api: ApiProcess, who: str, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=timeout
        )

    def close(self) -> None:
        for process in self.processes:
            process.stop()


async def _seed(database_url: str, runs: Path) -> dict[str, str]:
    from backend import db
    from backend.accounts import service as accounts
    from backend.audit.service import Actor
    from backend.bus import Bus
    from backend.policy_store import service as policies

    engine = await db.connect(database_url)
    try:
        org = await accounts.create_org("Res", "res")
        dev = await accounts.add_user(org["id"], "dev@res.test", role="viewer")
        alice = await accounts.add_user(org["id"], "alice@res.test", role="approver")
        carol = await accounts.add_user(org["id"], "carol@res.test", role="approver")
        agent, _ = await accounts.create_key(org["id"], dev["id"], "agent", scope="agent")
        agent2, _ = await accounts.create_key(org["id"], dev["id"], "agent-two", scope="agent")
        approver, _ = await accounts.create_key(org["id"], alice["id"], "alice", scope="approver")
        carol_key, _ = await accounts.create_key(org["id"], carol["id"], "carol", scope="approver")
        policy = POLICY.format(python=sys.executable, upstream=UPSTREAM, runs=runs, escalate=ESCALATE_AFTER)
        await policies.apply(org["id"], policy, Actor.system("test"), Bus(None))
    finally:
        await db.disconnect(engine)
    return {"agent": agent, "agent2": agent2, "approver": approver, "carol": carol_key}


@pytest.fixture
def pg_url(_postgres_migrated: str) -> str:
    asyncio.run(_truncate_postgres(_postgres_migrated))
    return _postgres_migrated


@pytest.fixture
async def cluster(pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    tokens = await _seed(pg_url, tmp_path / "deploy-runs.jsonl")
    running = Cluster(pg_url, redis_url, tmp_path, tokens)
    try:
        yield running
    finally:
        running.close()
