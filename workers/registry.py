"""Every job the worker runs, collected from the domains that own them."""

from __future__ import annotations

from typing import Any

from backend.approvals import jobs as approval_jobs
from backend.notifications import jobs as notification_jobs


def functions() -> list[Any]:
    return [*approval_jobs.FUNCTIONS, *notification_jobs.FUNCTIONS]


def cron_jobs() -> list[Any]:
    return [*approval_jobs.CRON_JOBS, *notification_jobs.CRON_JOBS]
