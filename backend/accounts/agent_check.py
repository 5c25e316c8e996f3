"""`GET /api/v1/agents/me`: the gateway checks an agent's own key and learns the identity behind it."""

from __future__ import annotations

import msgspec
from litestar import Controller, get

from backend.accounts.service import Principal
from backend.audit.calls import may_report
from backend.errors import Forbidden


class AgentCard(msgspec.Struct):
    """Who an agent key belongs to, as the policy, approvals and the audit see it."""

    id: str
    name: str
    labels: dict[str, str]
    user: str
    org: str


class AgentController(Controller):
    path = "/api/v1/agents"
    tags = ["accounts"]

    @get("/me", operation_id="check_agent_key", summary="The agent behind this key; 401 revoked, 403 not an agent key")
    async def me(self, principal: Principal) -> AgentCard:
        if not may_report(principal):
            raise Forbidden(
                "this is not an agent key",
                detail={"hint": "agents authenticate with an agent-scoped key (preloop key create --scope agent)"},
            )
        return AgentCard(
            id=str(principal.key_id),
            name=principal.key_name,
            labels={str(k): str(v) for k, v in principal.labels.items()},
            user=principal.email,
            org=str(principal.org_id),
        )
