"""Prometheus metrics of the hub; each process counts its own (scrape every process in scaled mode)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger("preloop.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

HTTP_REQUESTS = Counter(
    "preloop_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "preloop_http_request_duration_seconds",
    "Time to answer an HTTP request (long-polls and event streams included), by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DECISIONS = Counter(
    "preloop_decisions_total",
    "Approval requests that left `pending`, by outcome (approved, declined, expired, cancelled).",
    ["outcome"],
)
TIME_TO_DECISION = Histogram(
    "preloop_time_to_decision_seconds",
    "From a request's creation to its decision, by outcome.",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
)
PENDING = Gauge(
    "preloop_pending_requests",
    "Approval requests pending in the database (all orgs), read from the database at scrape time.",
)
DELIVERIES = Counter(
    "preloop_notification_deliveries_total",
    "Notification delivery attempts, by channel and result (sent, failed, skipped, ...).",
    ["channel", "result"],
)
DEADLINE_LAG = Histogram(
    "preloop_deadline_lag_seconds",
    "How late a deadline fired: firing time minus due time, by kind (expiry, escalation).",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
)
DB_QUERIES = Counter(
    "preloop_db_queries_total",
    "Statements this process sent to PostgreSQL (BEGIN/COMMIT and advisory locks included; SQLite not counted).",
)


def count_query(_record: object) -> None:
    """asyncpg query-logger callback: one statement sent to the server."""
    DB_QUERIES.inc()


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite hands back naive UTC
        return value.replace(tzinfo=UTC)
    return value


def record_http(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


def record_decision(outcome: str, created_at: datetime | None, decided_at: datetime | None) -> None:
    """Count a decision (call after its transaction commits) and how long it took."""
    DECISIONS.labels(outcome).inc()
    created, decided = _aware(created_at), _aware(decided_at)
    if created is not None and decided is not None:
        TIME_TO_DECISION.labels(outcome).observe(max(0.0, (decided - created).total_seconds()))


def record_delivery(channel: str, result: str) -> None:
    """Count one notification delivery attempt: `record_delivery("email", "sent")`."""
    DELIVERIES.labels(channel, result).inc()


def record_deadline_lag(kind: str, due: datetime | None, fired: datetime) -> None:
    due = _aware(due)
    if due is not None:
        DEADLINE_LAG.labels(kind).observe(max(0.0, (_aware(fired) or fired).timestamp() - due.timestamp()))


async def refresh_from_database() -> None:
    """Gauges that are facts of the database, so every process reports the same value."""
    from backend.approvals.tables import ApprovalRequest

    try:
        PENDING.set(await ApprovalRequest.count().where(ApprovalRequest.status == "pending"))
    except Exception:  # a scrape must still answer while the database is down; /ready reports that
        logger.warning("could not count pending requests for /metrics", exc_info=True)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
