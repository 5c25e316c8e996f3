"""Fault tests: real `preloop serve` processes on loopback, PostgreSQL + Redis (the test's own db).

Each test gets a freshly truncated, migrated PostgreSQL database with one org (an agent key owned
by a viewer, an approver key for alice) and a policy holding `deploy` for alice's approval.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import _truncate_postgres
from tests.helpers import free_port

POLICY = """
version: "1"
name: resilience
approval_policies:
  - name: ops
    approvers: [alice@res.test]
    quorum: 1
    timeout: 1h
    channels: [web]
tools:
  - name: deploy
    action: require_approval
    approval_policy: ops
  - name: read_logs
    action: allow
defaults:
  unknown_tools: deny
"""


class ApiProcess:
    """One `preloop serve --no-worker` process."""

    def __init__(self, database_url: str, redis_url: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PRELOOP_DATABASE_URL": database_url,
            "PRELOOP_REDIS_URL": redis_url,
            "PRELOOP_DATA_DIR": str(data_dir),
            "PRELOOP_DEMO": "false",
            "PRELOOP_SECRET_KEY": "resilience",
            "PRELOOP_PORT": str(self.port),
            "PRELOOP_LOG_LEVEL": "warning",
        }
        self.log = data_dir / f"api-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> ApiProcess:
        preloop = str(Path(sys.executable).parent / "preloop")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([preloop, "serve", "--no-worker"], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as probe:
            while True:
                try:
                    if (await probe.get("/health")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"API process did not start: {self.log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class Cluster:
    """API processes sharing one PostgreSQL database and one Redis db; clean shutdown at the end."""

    def __init__(self, database_url: str, redis_url: str, data_dir: Path, tokens: dict[str, str]) -> None:
        self.database_url, self.redis_url, self.data_dir, self.tokens = database_url, redis_url, data_dir, tokens
        self.apis: list[ApiProcess] = []

    async def api(self, database_url: str | None = None) -> ApiProcess:
        api = ApiProcess(database_url or self.database_url, self.redis_url, self.data_dir)
        self.apis.append(api)
        return await api.start()

    def client(self, api: ApiProcess, who: str, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=timeout
        )

    def close(self) -> None:
        for api in self.apis:
            api.stop()


async def _seed(database_url: str) -> dict[str, str]:
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
        agent, _ = await accounts.create_key(org["id"], dev["id"], "agent", scope="agent")
        approver, _ = await accounts.create_key(org["id"], alice["id"], "alice", scope="approver")
        await policies.apply(org["id"], POLICY, Actor.system("test"), Bus(None))
    finally:
        await db.disconnect(engine)
    return {"agent": agent, "approver": approver}


@pytest.fixture
def pg_url(_postgres_migrated: str) -> str:
    asyncio.run(_truncate_postgres(_postgres_migrated))
    return _postgres_migrated


@pytest.fixture
async def cluster(pg_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    tokens = await _seed(pg_url)
    running = Cluster(pg_url, redis_url, tmp_path, tokens)
    try:
        yield running
    finally:
        running.close()
