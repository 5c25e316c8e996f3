"""Red flags on a held call, computed from history: what an approver should look at twice."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from backend.approvals.tables import ApprovalRequest
from backend.audit.tables import AuditEvent

HISTORY_DAYS = 90
DECLINE_DAYS = 7
RECENT_DECLINES = 2  # declined requests of the agent within DECLINE_DAYS that raise the flag
MIN_SAMPLES = 5  # earlier numeric values needed before "far above usual" means anything
MIN_HOURS_SAMPLES = 10  # earlier calls needed before "outside the usual hours" means anything
Z_LIMIT = 3.5  # robust z-score (Iglewicz and Hoaglin's outlier cut-off)
PRODUCTION = re.compile(r"(?<![a-z0-9])(prod|production|prd|live)(?![a-z0-9])", re.IGNORECASE)
TARGET_KEYS = frozenset({
    "target", "host", "hostname", "env", "environment", "cluster", "service", "database", "db",
    "table", "resource", "repo", "repository", "bucket", "namespace", "instance", "account", "path", "url",
})


@dataclass(frozen=True)
class RedFlag:
    code: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "why": self.why}


@dataclass
class History:
    """What the flags are computed from (loaded by `load_history`, or built by tests)."""

    earlier_by_agent: int = 0
    calls_reported_by_agent: int = 0
    tool_hours: list[int] = field(default_factory=list)
    tool_arguments: list[dict[str, Any]] = field(default_factory=list)
    pending_same_tool: list[dict[str, Any]] = field(default_factory=list)
    agent_declines: int = 0


def numbers(arguments: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted path, value) of every number in the arguments, nested objects included."""
    if isinstance(arguments, dict):
        for key, value in arguments.items():
            yield from numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(arguments, int | float) and not isinstance(arguments, bool):
        yield prefix, float(arguments)


def strings(arguments: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(arguments, dict):
        for key, value in arguments.items():
            yield from strings(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(arguments, list):
        for index, value in enumerate(arguments):
            yield from strings(value, f"{prefix}[{index}]")
    elif isinstance(arguments, str):
        yield prefix, arguments


def robust_z(value: float, sample: list[float]) -> float:
    """How far above the sample's median `value` is, in robust standard deviations (MAD-based)."""
    median = statistics.median(sample)
    mad = statistics.median(abs(x - median) for x in sample)
    if mad > 0:
        return 0.6745 * (value - median) / mad
    mean_ad = statistics.fmean(abs(x - median) for x in sample)
    if mean_ad > 0:
        return (value - median) / (1.2533 * mean_ad)
    return float("inf") if value > median else 0.0


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _targets(arguments: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in arguments.items() if k.lower() in TARGET_KEYS and isinstance(v, str | int)}


def _hour_span(hours: list[int]) -> str:
    return f"{min(hours):02d}:00-{max(hours):02d}:59 UTC"


def compute(row: dict[str, Any], history: History) -> list[RedFlag]:
    """The flags for one request, each with a one-line reason. Pure: no database, no clock."""
    flags: list[RedFlag] = []
    tool, agent = row["tool"], row.get("agent_name") or "this agent"
    arguments = row.get("arguments") or {}
    if history.earlier_by_agent == 0 and history.calls_reported_by_agent == 0:
        flags.append(RedFlag("first_call", f"{agent} has never called {tool} before"))
    created: datetime = row["created_at"]
    if len(history.tool_hours) >= MIN_HOURS_SAMPLES:
        usual = set(history.tool_hours)
        if not ({(created.hour + d) % 24 for d in (-1, 0, 1)} & usual):
            flags.append(RedFlag(
                "unusual_hour",
                f"{tool} is called at {created:%H:%M} UTC; in the last {HISTORY_DAYS} days its calls came "
                f"{_hour_span(history.tool_hours)}",
            ))
    earlier: dict[str, list[float]] = {}
    for past in history.tool_arguments:
        for path, value in numbers(past):
            earlier.setdefault(path, []).append(value)
    for path, value in numbers(arguments):
        sample = earlier.get(path, [])
        if len(sample) >= MIN_SAMPLES and robust_z(value, sample) > Z_LIMIT:
            flags.append(RedFlag(
                "numeric_outlier",
                f"{path}={_fmt(value)} is far above its usual value for {tool} "
                f"(median {_fmt(statistics.median(sample))} over {len(sample)} calls in {HISTORY_DAYS} days)",
            ))
    mine = _targets(arguments) if isinstance(arguments, dict) else {}
    same = []
    for other in history.pending_same_tool:
        theirs = _targets(other.get("arguments") or {})
        shared = {k: v for k, v in mine.items() if theirs.get(k) == v}
        if other.get("arguments_hash") == row.get("arguments_hash") or shared:
            same.append(shared)
    if same:
        named = ", ".join(f"{k}={v}" for k, v in sorted(same[0].items())) or "identical arguments"
        flags.append(RedFlag(
            "duplicate_pending",
            f"{len(same)} other pending {tool} request(s) for the same target ({named})",
        ))
    for path, text in strings(arguments):
        if match := PRODUCTION.search(text):
            flags.append(RedFlag("production", f"the arguments name production: {path}={text[:60]!r} ({match[0]})"))
            break
    if history.agent_declines >= RECENT_DECLINES:
        flags.append(RedFlag(
            "recent_declines",
            f"{history.agent_declines} of {agent}'s requests were declined in the last {DECLINE_DAYS} days",
        ))
    return flags


async def load_history(row: dict[str, Any]) -> History:
    created: datetime = row["created_at"]
    if not isinstance(created, datetime):
        created = datetime.fromisoformat(str(created))
    org, tool = row["org"], row["tool"]
    before = (ApprovalRequest.org == org) & (ApprovalRequest.created_at < created) & (ApprovalRequest.id != row["id"])
    same_agent = (
        ApprovalRequest.agent_key == row["agent_key"] if row.get("agent_key")
        else ApprovalRequest.agent_name == row.get("agent_name", "")
    )
    history = History()
    history.earlier_by_agent = await ApprovalRequest.count().where(
        before & same_agent & (ApprovalRequest.tool == tool)
    )
    if row.get("agent_key"):
        reported = await AuditEvent.select(AuditEvent.id).where(
            (AuditEvent.org_id == str(org)) & (AuditEvent.kind.is_in(["call.allow", "call.granted"]))
            & (AuditEvent.actor_id == str(row["agent_key"])) & (AuditEvent.subject_id == tool[:64])
        ).first()
        history.calls_reported_by_agent = int(reported is not None)
    recent = (
        await ApprovalRequest.select(ApprovalRequest.created_at, ApprovalRequest.arguments)
        .where(before & (ApprovalRequest.tool == tool)
               & (ApprovalRequest.created_at >= created - timedelta(days=HISTORY_DAYS)))
        .order_by(ApprovalRequest.created_at, ascending=False)
        .limit(5000)
        .output(load_json=True)
    )
    history.tool_hours = [r["created_at"].hour for r in recent]
    history.tool_arguments = [r["arguments"] for r in recent if isinstance(r["arguments"], dict)]
    history.pending_same_tool = (
        await ApprovalRequest.select(ApprovalRequest.arguments, ApprovalRequest.arguments_hash)
        .where((ApprovalRequest.org == org) & (ApprovalRequest.status == "pending")
               & (ApprovalRequest.tool == tool) & (ApprovalRequest.id != row["id"]))
        .limit(200)
        .output(load_json=True)
    )
    history.agent_declines = await ApprovalRequest.count().where(
        (ApprovalRequest.org == org) & same_agent & (ApprovalRequest.status == "declined")
        & (ApprovalRequest.decided_at >= created - timedelta(days=DECLINE_DAYS))
        & (ApprovalRequest.id != row["id"])
    )
    return history


async def red_flags(row: dict[str, Any]) -> list[dict[str, str]]:
    return [flag.to_dict() for flag in compute(row, await load_history(row))]
