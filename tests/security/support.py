"""The cast of the security tests: one org with every kind of caller, and a second org."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from backend.accounts import service as accounts
from tests.helpers import Org, auth, make_org

ORIGIN = "http://hub.test"

POLICY = """
version: "1"
name: security-matrix
approval_policies:
  - name: sre
    teams: [sre]
    approvers: [admin@{slug}.test]
    quorum: 1
    timeout: 1h
    max_grant: 600
tools:
  - name: deploy
    server: infra
    action: require_approval
    approval_policy: sre
  - name: read_logs
    action: allow
defaults:
  unknown_tools: deny
"""

# The callers of the matrix, in column order.
WHO = ("anonymous", "agent", "viewer", "approver", "ineligible", "admin", "other_admin")


@dataclass
class Cast:
    """Who calls: a header set per caller; sessions also send the app's Origin (a same-site caller)."""

    org: Org
    other: Org
    headers: dict[str, dict[str, str]]
    sessions: dict[str, str] = field(default_factory=dict)
    counter: int = 0

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}-{uuid.uuid4().hex[:6]}"


async def login(client: Any, email: str, password: str, org: str) -> str:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password, "org": org})
    assert response.status_code == 201, response.text
    token = response.cookies["preloop_session"]
    client.cookies.clear()
    return str(token)


def session_headers(token: str) -> dict[str, str]:
    return {"Cookie": f"preloop_session={token}", "Origin": ORIGIN}


async def make_cast(client: Any) -> Cast:
    org = await make_org("acme")
    other = await make_org("other")
    await accounts.add_user(org.id, "vera@acme.test", role="viewer", password="pw-vera")
    await accounts.add_member(org.id, "sre", "vera@acme.test")  # a viewer inside the approving team
    await accounts.add_user(org.id, "ian@acme.test", role="approver", password="pw-ian")  # in no team
    for target, slug in ((org, "acme"), (other, "other")):
        applied = await client.post(
            "/api/v1/policies", json={"source": POLICY.format(slug=slug)}, headers=auth(target.admin_token)
        )
        assert applied.status_code == 201, applied.text
    sessions = {
        "viewer": await login(client, "vera@acme.test", "pw-vera", "acme"),
        "approver": await login(client, "alice@acme.test", "pw-alice", "acme"),
        "ineligible": await login(client, "ian@acme.test", "pw-ian", "acme"),
        "admin": await login(client, "admin@acme.test", "admin-password", "acme"),
        "other_admin": await login(client, "admin@other.test", "admin-password", "other"),
    }
    headers: dict[str, dict[str, str]] = {"anonymous": {}, "agent": auth(org.agent_token)}
    headers.update({who: session_headers(token) for who, token in sessions.items()})
    return Cast(org, other, headers, sessions)


async def pending(client: Any, cast: Cast, *, token: str | None = None) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/approvals",
        json={"tool": "deploy", "server": "infra", "arguments": {"run": cast.unique("r")}},
        headers=auth(token or cast.org.agent_token),
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def approved(client: Any, cast: Cast, *, grant_seconds: int = 0, by: str = "bob") -> dict[str, Any]:
    request = await pending(client, cast)
    response = await client.post(
        f"/api/v1/approvals/{request['id']}/approve",
        json={"grant_seconds": grant_seconds},
        headers=auth(cast.org.approver_tokens[by]),
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def executing(client: Any, cast: Cast) -> dict[str, Any]:
    request = await approved(client, cast)
    response = await client.post(
        f"/api/v1/approvals/{request['id']}/claim",
        json={"arguments_hash": request["arguments_hash"]},
        headers=auth(cast.org.agent_token),
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def grant_id(client: Any, cast: Cast) -> str:
    request = await approved(client, cast, grant_seconds=60, by="alice")  # alice's session is the granter
    grants = (await client.get("/api/v1/grants", headers=auth(cast.org.admin_token))).json()
    return next(g["id"] for g in grants if g["request_id"] == request["id"])


async def asgi_status(app: Any, path: str, headers: dict[str, str]) -> int:
    """The status of a streaming GET, read from the first ASGI message; the stream is then dropped."""
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and not started.done():
            started.set_result(int(message["status"]))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "hub.test", **headers}.items()],
        "client": ("127.0.0.1", 1), "server": ("hub.test", 80),
    }
    task = asyncio.create_task(app(scope, receive, send))
    try:
        return await asyncio.wait_for(started, timeout=10)
    finally:
        disconnect.set()
        task.cancel()
        with contextlib.suppress(BaseException):  # the dropped stream may end any way it likes
            await task


@pytest.fixture(autouse=True)
async def clean_counters(hub: Any) -> AsyncIterator[None]:
    """Sign-in and token failure counters live in Redis; each test of a module that imports this starts and
    ends with none (those modules set low limits)."""
    async def clear() -> None:
        keys = [key async for key in hub.redis.client.scan_iter("preloop:auth:*")]
        if keys:
            await hub.redis.client.delete(*keys)

    await clear()
    yield
    await clear()
