"""`GET /api/v1/autonomy` (per-rule stats and suggestions) and `POST /api/v1/policies/dry-run`."""

from __future__ import annotations

from litestar import Controller, get, post

from backend.accounts.service import Principal
from backend.approvals import autonomy
from backend.approvals.autonomy import AutonomyReport
from backend.policy_store import replay
from backend.policy_store.replay import DryRun
from backend.policy_store.schemas import SourceBody


class AutonomyController(Controller):
    path = "/api/v1"
    tags = ["policies"]

    @get("/autonomy", operation_id="get_autonomy",
         summary="Per tool rule over 30 days: calls, approval rate, time to decision, declines; relax/tighten diffs")
    async def autonomy(self, principal: Principal) -> AutonomyReport:
        return await autonomy.report(principal.org_id)

    @post("/policies/dry-run", operation_id="dry_run_policy", status_code=200,
          summary="Replay the last 30 days of recorded calls against a draft; which decisions would change")
    async def dry_run(self, data: SourceBody, principal: Principal) -> DryRun:
        return await replay.dry_run(principal.org_id, data.source)
