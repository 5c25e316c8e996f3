"""Every job the worker runs, collected from the domains that own them."""

from __future__ import annotations

from typing import Any


def functions() -> list[Any]:
    jobs: list[Any] = []
    try:
        from backend.approvals import jobs as approval_jobs
    except ImportError:  # pragma: no cover - the approvals domain is always installed
        return jobs
    return [*jobs, *approval_jobs.FUNCTIONS]


def cron_jobs() -> list[Any]:
    try:
        from backend.approvals import jobs as approval_jobs
    except ImportError:  # pragma: no cover
        return []
    return list(approval_jobs.CRON_JOBS)
