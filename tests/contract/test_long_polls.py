"""Long-polls honour PRELOOP_MAX_WAIT_SECONDS whatever `wait`/`timeout` a caller asks for (1 s here)."""

from __future__ import annotations

from typing import Any

import anyio

from tests.contract.support import POLICY
from tests.helpers import auth, make_org


async def test_a_long_poll_for_a_newer_policy_ends_at_the_hubs_cap(client: Any) -> None:
    org = await make_org()
    admin = auth(org.admin_token)
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=admin)
    assert applied.status_code == 201, applied.text
    version = applied.json()["version"]
    with anyio.fail_after(30):  # asked for an hour; the hub's cap (1 s in these tests) answers instead
        unchanged = await client.get(
            "/api/v1/policies/active", params={"after": version, "wait": 3600}, headers=admin
        )
    assert unchanged.status_code == 304 and unchanged.content == b""


async def test_a_long_poll_for_decisions_ends_at_the_hubs_cap(client: Any) -> None:
    org = await make_org()
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    call = {"tool": "deploy", "server": "infra", "arguments": {}}
    created = (await client.post("/api/v1/approvals", json=call, headers=auth(org.agent_token))).json()
    with anyio.fail_after(30):
        answer = await client.get(
            "/api/v1/approvals/wait", params={"ids": created["id"], "timeout": 3600}, headers=auth(org.agent_token)
        )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"decided": [], "pending": [created["id"]], "unknown": []}
