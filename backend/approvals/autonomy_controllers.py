"""`GET /api/v1/autonomy` (per-rule stats and suggestions) and `POST /api/v1/policies/dry-run`."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from backend.accounts.service import Principal
from backend.approvals import autonomy
from backend.approvals.autonomy import AutonomyReport
from backend.deps import resolve_principal
from backend.errors import Forbidden
from backend.policy_store import replay
from backend.policy_store.replay import DryRun
from backend.policy_store.schemas import SourceBody


async def people_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Both answers carry every agent's recorded arguments: people only, never an agent's key."""
    principal = await resolve_principal(connection)  # type: ignore[arg-type]
    if principal.scope == "agent":
        raise Forbidden("an agent's key cannot read other calls' statistics or replay them",
                        code="people_only", detail={"hint": "use a session, or an approver or admin key"})


class AutonomyController(Controller):
    path = "/api/v1"
    tags = ["policies"]
    guards = [people_guard]

    @get("/autonomy", operation_id="get_autonomy",
         summary="Per tool rule over 30 days: calls, approval rate, time to decision, declines; relax/tighten diffs")
    async def autonomy(self, principal: Principal) -> AutonomyReport:
        return await autonomy.report(principal.org_id)

    @post("/policies/dry-run", operation_id="dry_run_policy", status_code=200,
          summary="Replay the last 30 days of recorded calls against a draft; which decisions would change")
    async def dry_run(self, data: SourceBody, principal: Principal) -> DryRun:
        return await replay.dry_run(principal.org_id, data.source)
