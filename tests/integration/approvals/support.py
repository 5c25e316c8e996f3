"""Shared setup for the approval tests: one policy that exercises every rule, and short calls."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from backend.audit.tables import AuditEvent
from backend.settings import Settings
from tests.helpers import Org, auth, free_port

POLICY = """
version: "1"
name: approvals-tests
approval_policies:
  - name: one
    approvers: [carol@acme.test]
    teams: [sre]
    quorum: 1
    timeout: 1h
    channels: [web, email]
    max_grant: 600
  - name: two
    teams: [sre]
    approvers: [carol@acme.test, dev@acme.test, admin@acme.test]
    quorum: 2
    timeout: 1h
    require_decline_reason: true
  - name: two-soft
    approvers: [alice@acme.test, bob@acme.test, carol@acme.test]
    quorum: 2
    timeout: 1h
    decline_mode: when_quorum_unreachable
  - name: alice-only
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [push]
    escalation:
      - {after: 10m, to: [carol@acme.test]}
      - {after: 20m, to: [sre]}
  - name: short
    approvers: [alice@acme.test]
    timeout: 1
  - name: auto
    approvers: [alice@acme.test]
    timeout: 1h
    on_timeout: approve
tools:
  - name: deploy
    server: infra
    action: require_approval
    approval_policy: one
    risk: high
  - name: drop_table
    action: require_approval
    approval_policy: two
  - name: grant_access
    action: require_approval
    approval_policy: two-soft
  - name: restart
    action: require_approval
    approval_policy: alice-only
  - name: ping
    action: require_approval
    approval_policy: short
  - name: scale
    action: require_approval
    approval_policy: auto
  - name: read_logs
    action: allow
defaults:
  unknown_tools: deny
"""


async def apply_policy(client: Any, org: Org, source: str = POLICY) -> None:
    response = await client.post("/api/v1/policies", json={"source": source}, headers=auth(org.admin_token))
    assert response.status_code == 201, response.text


async def create(
    client: Any, org: Org, tool: str = "deploy", arguments: dict[str, Any] | None = None, *,
    server: str = "", token: str | None = None, expect: int = 201, **extra: Any,
) -> dict[str, Any]:
    body = {"tool": tool, "server": server, "arguments": arguments or {"env": "prod"}, **extra}
    if tool == "deploy" and not server:
        body["server"] = "infra"
    response = await client.post("/api/v1/approvals", json=body, headers=auth(token or org.agent_token))
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


async def vote(
    client: Any, token: str, request_id: str, decision: str = "approve", *, expect: int = 200, **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/api/v1/approvals/{request_id}/{decision}", json=body, headers=auth(token))
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


async def audit_kinds(org: Org, subject_id: str) -> list[str]:
    rows = await AuditEvent.select(AuditEvent.kind).where(
        (AuditEvent.org_id == str(org.id)) & (AuditEvent.subject_id == subject_id)
    ).order_by(AuditEvent.seq)
    return [r["kind"] for r in rows]


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `preloop` child process on the test's database and Redis."""
    return {
        **os.environ,
        "PRELOOP_DATABASE_URL": settings.database_url,
        "PRELOOP_REDIS_URL": settings.redis.url,
        "PRELOOP_DATA_DIR": str(settings.server.data_dir),
        "PRELOOP_DEMO": "false",
        "PRELOOP_SECRET_KEY": "test-secret",
        **extra,
    }


@asynccontextmanager
async def api_process(settings: Settings) -> AsyncIterator[str]:
    """`preloop serve --no-worker` in its own process on the test's database and Redis; yields its URL."""
    port = free_port()
    env = process_env(settings, PRELOOP_PORT=str(port))
    command = [str(Path(sys.executable).parent / "preloop"), "serve", "--no-worker"]
    process = await anyio.open_process(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as probe:
            with anyio.fail_after(30):
                while True:  # readiness: the port answers once startup completes
                    try:
                        if (await probe.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)
        yield url
    finally:
        await stop_process(process)


async def stop_process(process: Any) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    process.terminate()
    with anyio.move_on_after(10):
        await process.wait()
    if process.returncode is None:
        process.kill()
