"""Every job the worker runs, collected from the domains that own them."""

from __future__ import annotations

from typing import Any

from backend.approvals import jobs as approval_jobs


def functions() -> list[Any]:
    return list(approval_jobs.FUNCTIONS)


def cron_jobs() -> list[Any]:
    return list(approval_jobs.CRON_JOBS)
