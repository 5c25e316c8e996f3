"""Deadline jobs: timeouts and escalation levels, plus the sweep that catches missed ones."""

from __future__ import annotations

import logging
import time
from typing import Any

from arq import cron

from backend.approvals import flows
from backend.approvals.tables import ApprovalRequest

logger = logging.getLogger("preloop.approvals.jobs")
SWEEP_BATCH = 500


async def expire_request(ctx: dict[str, Any], request_id: str) -> bool:
    """Job `expire:<id>`: time the request out if it is still pending at its deadline."""
    return await flows.fire_expiry(ctx["hub"], request_id)


async def escalate_request(ctx: dict[str, Any], request_id: str, level: int) -> bool:
    """Job `escalate:<id>:<level>`: fire that escalation level if it is the next one and due."""
    return await flows.fire_escalation(ctx["hub"], request_id, level)


async def sweep_deadlines(ctx: dict[str, Any]) -> int:
    """Fire every deadline the database says has passed; a job lost with a worker is caught here."""
    hub = ctx["hub"]
    every = hub.settings.approvals.sweep_seconds
    last = ctx.get("approvals_last_sweep", 0.0)
    if time.monotonic() - last < every - 0.05:
        return 0
    ctx["approvals_last_sweep"] = time.monotonic()
    stamp = flows.now()
    fired = 0
    pending = ApprovalRequest.status == "pending"
    expired = (
        await ApprovalRequest.select(ApprovalRequest.id)
        .where(pending & (ApprovalRequest.expires_at <= stamp))
        .limit(SWEEP_BATCH)
    )
    for row in expired:
        fired += await flows.fire_expiry(hub, row["id"])
    due = (
        await ApprovalRequest.select(ApprovalRequest.id)
        .where(pending & (ApprovalRequest.next_escalation_at <= stamp))
        .limit(SWEEP_BATCH)
    )
    for row in due:
        while await flows.fire_escalation(hub, row["id"]):  # a long outage may owe several levels
            fired += 1
    if fired:
        logger.info("sweep fired missed deadlines", extra={"fired": fired})
    return fired


FUNCTIONS = [expire_request, escalate_request, sweep_deadlines]
# Every second, throttled to PRELOOP_SWEEP_SECONDS inside; at startup too, so a worker that was
# down while deadlines passed fires them as soon as it is back.
CRON_JOBS = [cron(sweep_deadlines, second=None, run_at_startup=True, keep_result=0, timeout=300)]
