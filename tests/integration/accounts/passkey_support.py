"""Sessions and passkeys for the passkey tests: one HTTP client per signed-in person."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from backend.app import create_app
from tests.helpers import Org, auth
from tests.integration.approvals.support import apply_policy, create
from tests.soft_authenticator import SoftAuthenticator

PASSKEY_POLICY = """
version: "1"
name: passkey-tests
approval_policies:
  - name: strong
    approvers: [alice@acme.test, bob@acme.test]
    quorum: 1
    timeout: 1h
    require_passkey: true
  - name: plain
    approvers: [alice@acme.test]
    timeout: 1h
tools:
  - name: deploy
    action: require_approval
    approval_policy: strong
  - name: restart
    action: require_approval
    approval_policy: plain
defaults:
  unknown_tools: deny
"""


@asynccontextmanager
async def session(
    hub: Any, email: str | None = None, password: str | None = None, base_url: str = "http://hub.test"
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client: its own cookie jar, signed in with a password when one is given."""
    transport = httpx.ASGITransport(app=create_app(hub=hub))
    # Browsers send Origin with every POST/PUT/PATCH/DELETE; the hub's CSRF check needs it for sessions.
    async with httpx.AsyncClient(transport=transport, base_url=base_url, headers={"Origin": base_url}) as http:
        if email:
            response = await http.post("/api/v1/auth/login", json={"email": email, "password": password})
            assert response.status_code == 201 or response.status_code == 200, response.text
        yield http


async def enrol(http: httpx.AsyncClient, name: str = "laptop", **kwargs: Any) -> SoftAuthenticator:
    authenticator = SoftAuthenticator(**kwargs)
    options = await http.post("/api/v1/webauthn/register/options")
    assert options.status_code == 200, options.text
    created = authenticator.create(options.json()["public_key"])
    response = await http.post("/api/v1/webauthn/register/verify", json={"credential": created, "name": name})
    assert response.status_code == 201, response.text
    return authenticator


async def step_up(
    http: httpx.AsyncClient, authenticator: SoftAuthenticator, request_id: str, decision: str = "approve"
) -> dict[str, Any]:
    response = await http.post(f"/api/v1/approvals/{request_id}/step-up/options", json={"decision": decision})
    assert response.status_code == 200, response.text
    return authenticator.get(response.json()["public_key"])


async def held(client: Any, org: Org, tool: str = "deploy", arguments: dict[str, Any] | None = None) -> str:
    return str((await create(client, org, tool, arguments or {"env": "prod"}))["id"])


async def setup_policy(client: Any, org: Org) -> None:
    await apply_policy(client, org, PASSKEY_POLICY)


__all__ = ["auth", "enrol", "held", "session", "setup_policy", "step_up"]
