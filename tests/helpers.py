"""Helpers shared by tests: org factory, auth header, free ports."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Org:
    """A ready organization: an admin, two approvers in team `sre`, an agent key owned by `dev`."""

    id: Any
    admin_token: str
    agent_token: str
    approver_tokens: dict[str, str]


async def make_org(slug: str = "acme") -> Org:
    from backend.accounts import service

    org = await service.create_org(slug.title(), slug)
    admin = await service.add_user(org["id"], f"admin@{slug}.test", role="admin", password="admin-password")
    dev = await service.add_user(org["id"], f"dev@{slug}.test", role="viewer")
    await service.add_team(org["id"], "sre")
    approver_tokens: dict[str, str] = {}
    for name in ("alice", "bob", "carol"):
        user = await service.add_user(org["id"], f"{name}@{slug}.test", role="approver", password="pw-" + name)
        if name != "carol":
            await service.add_member(org["id"], "sre", user["email"])
        token, _ = await service.create_key(org["id"], user["id"], f"{name}-approver", scope="approver")
        approver_tokens[name] = token
    admin_token, _ = await service.create_key(org["id"], admin["id"], "admin-cli", scope="admin")
    agent_token, _ = await service.create_key(org["id"], dev["id"], "ci-bot", scope="agent", labels={"team": "web"})
    return Org(org["id"], admin_token, agent_token, approver_tokens)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




def wait_for_health(port: int, process: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a hub process's /health until it answers; fail early if the process exits."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()  # type: ignore[no-any-return]
        except httpx.HTTPError:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the hub did not come up"
            time.sleep(0.2)


def structured(result: Any) -> dict[str, Any]:
    """A `CallToolResult`'s structured content (asserting it has some)."""
    assert result.structured_content is not None, result
    return dict(result.structured_content)
