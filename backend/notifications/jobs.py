"""Worker jobs: deliver one notification (`notify:<id>`), remind non-voters (`remind:<id>`), and the sweep."""

from __future__ import annotations

import logging
import time
from typing import Any

from arq import Retry, cron
from arq.worker import func

from backend.approvals import flows
from backend.notifications import service

logger = logging.getLogger("preloop.notifications.jobs")
MAX_JOB_TRIES = 1000
"""arq's own cap; the row's attempt counter (PRELOOP_NOTIFY_MAX_ATTEMPTS) is what ends retries."""


async def deliver_notification(ctx: dict[str, Any], delivery_id: str) -> str:
    """Job `notify:<id>`: send it if still owed; a failure comes back later under the same id."""
    wait = await service.deliver(ctx["hub"], delivery_id)
    if wait is not None:
        raise Retry(defer=wait)
    return "done"


async def remind_request(ctx: dict[str, Any], request_id: str) -> int:
    """Job `remind:<id>`: at half the timeout, tell approvers who have not voted yet."""
    return await flows.fire_reminder(ctx["hub"], request_id)


async def sweep_notifications(ctx: dict[str, Any]) -> int:
    """Re-queue deliveries and reminders whose jobs were lost (Redis flushed, worker killed)."""
    hub = ctx["hub"]
    every = hub.settings.approvals.sweep_seconds
    last = ctx.get("notifications_last_sweep", 0.0)
    if time.monotonic() - last < every - 0.05:
        return 0
    ctx["notifications_last_sweep"] = time.monotonic()
    requeued = await service.sweep(hub)
    reminded = await flows.sweep_reminders(hub)
    if requeued or reminded:
        logger.info("notification sweep", extra={"requeued": requeued, "reminded": reminded})
    return requeued + reminded


FUNCTIONS = [
    # keep_result=0: a finished job leaves no result key, so the sweep can queue the same id again.
    func(deliver_notification, name=service.JOB, max_tries=MAX_JOB_TRIES, keep_result=0, timeout=120),
    func(remind_request, name="remind_request", keep_result=0),
    sweep_notifications,
]
CRON_JOBS = [cron(sweep_notifications, second=None, run_at_startup=True, keep_result=0, timeout=300)]
