"""Red flags on a held call, computed from history: what an approver should look at twice."""

from __future__ import annotations

import bisect
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
    tool_numbers: list[list[tuple[str, float]]] | None = None
    """`numbers()` of each of `tool_arguments`, when the read already extracted them (shared by a page)."""
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
    own = list(numbers(arguments))
    earlier: dict[str, list[float]] = {path: [] for path, _ in own}  # the samples of this call's numbers
    pasts = history.tool_numbers
    for past in pasts if pasts is not None else (numbers(a) for a in history.tool_arguments):
        for path, value in past:
            if (sample := earlier.get(path)) is not None:
                sample.append(value)
    for path, value in own:
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


RECENT_LIMIT = 5000
"""Earlier calls of the tool (within HISTORY_DAYS) a request's flags are computed from, newest first."""
PENDING_LIMIT = 200
"""Other pending requests of the tool compared for duplicate targets."""
_SHARED_EXTRA = 500  # rows beyond RECENT_LIMIT a page's shared read takes, for its items' newer neighbours


def _created(row: dict[str, Any]) -> datetime:
    created = row["created_at"]
    return created if isinstance(created, datetime) else datetime.fromisoformat(str(created))


def _same_agent(row: dict[str, Any]) -> Any:
    return (
        ApprovalRequest.agent_key == row["agent_key"] if row.get("agent_key")
        else ApprovalRequest.agent_name == row.get("agent_name", "")
    )


async def _recent(org: Any, tool: str, newest: datetime, oldest: datetime, limit: int) -> list[dict[str, Any]]:
    """The tool's requests created in [oldest - HISTORY_DAYS, newest), newest first, at most `limit`."""
    rows: list[dict[str, Any]] = (
        await ApprovalRequest.select(ApprovalRequest.id, ApprovalRequest.created_at, ApprovalRequest.arguments)
        .where((ApprovalRequest.org == org) & (ApprovalRequest.tool == tool)
               & (ApprovalRequest.created_at < newest)
               & (ApprovalRequest.created_at >= oldest - timedelta(days=HISTORY_DAYS)))
        .order_by(ApprovalRequest.created_at, ascending=False)
        .limit(limit)
        .output(load_json=True)
    )
    return rows


class _Shared:
    """One read of a tool's earlier requests (`_recent`, newest first), with what the flags use of each
    row extracted once: its hour, its arguments and their numbers."""

    def __init__(self, rows: list[dict[str, Any]], *, truncated: bool) -> None:
        self.truncated = truncated  # the read stopped at its limit: older rows in range may be unread
        created = [_created(r) for r in rows]
        self._keys = [-c.timestamp() for c in created]  # ascending, for bisect
        self.hours = [c.hour for c in created]
        self.arguments = [r["arguments"] if isinstance(r["arguments"], dict) else None for r in rows]
        self.numbers = [list(numbers(a)) if a is not None else None for a in self.arguments]

    @classmethod
    async def read(cls, org: Any, tool: str, newest: datetime, oldest: datetime, limit: int) -> _Shared:
        rows = await _recent(org, tool, newest, oldest, limit)
        return cls(rows, truncated=len(rows) >= limit)

    def span(self, created: datetime) -> tuple[int, int] | None:
        """Where the rows a request created at `created` uses are: created before it (so not itself),
        within HISTORY_DAYS, the newest RECENT_LIMIT; what `_recent(org, tool, created, created,
        RECENT_LIMIT)` reads. None when this read may have stopped short of that window."""
        since = created - timedelta(days=HISTORY_DAYS)
        start = bisect.bisect_right(self._keys, -created.timestamp())
        stop = bisect.bisect_right(self._keys, -since.timestamp(), lo=start)
        if start + RECENT_LIMIT > stop == len(self._keys) and self.truncated:
            return None  # the window goes on past the last row read
        return start, min(stop, start + RECENT_LIMIT)

    def fill(self, history: History, start: int, stop: int) -> None:
        history.tool_hours = self.hours[start:stop]
        history.tool_arguments = [a for a in self.arguments[start:stop] if a is not None]
        history.tool_numbers = [n for n in self.numbers[start:stop] if n is not None]


async def load_histories(rows: list[dict[str, Any]]) -> list[History]:
    """The history behind each request's flags (for an inbox page: `rows` newest first or in any order).

    What depends only on the tool (its earlier calls with their arguments, the other pending requests)
    is read once per org and tool for the whole page, not once per request: an inbox of N pending
    requests of one tool read and decoded up to N x 5,000 earlier calls. A request the shared read
    does not fully cover (its window reaches past what was read) reads its own.
    """
    histories = [History() for _ in rows]
    groups: dict[tuple[str, str], list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault((str(row["org"]), row["tool"]), []).append(index)
    for (org, tool), members in groups.items():
        times = [_created(rows[i]) for i in members]
        shared = await _Shared.read(org, tool, max(times), min(times), RECENT_LIMIT + _SHARED_EXTRA)
        pending = (
            await ApprovalRequest.select(ApprovalRequest.id, ApprovalRequest.arguments, ApprovalRequest.arguments_hash)
            .where((ApprovalRequest.org == org) & (ApprovalRequest.status == "pending")
                   & (ApprovalRequest.tool == tool))
            .limit(PENDING_LIMIT + len(members))
            .output(load_json=True)
        )
        reported: dict[str, int] = {}
        for index, created in zip(members, times, strict=True):
            row, history = rows[index], histories[index]
            if (span := shared.span(created)) is not None:
                shared.fill(history, *span)
            else:  # its own read: exactly its window
                own = await _Shared.read(org, tool, created, created, RECENT_LIMIT)
                own.fill(history, 0, len(own.hours))
            history.pending_same_tool = [
                {"arguments": p["arguments"], "arguments_hash": p["arguments_hash"]}
                for p in pending if str(p["id"]) != str(row["id"])
            ][:PENDING_LIMIT]
            same_agent = _same_agent(row)
            history.earlier_by_agent = await ApprovalRequest.count().where(
                (ApprovalRequest.org == org) & (ApprovalRequest.created_at < created)
                & (ApprovalRequest.id != row["id"]) & same_agent & (ApprovalRequest.tool == tool)
            )
            if key := row.get("agent_key"):
                if str(key) not in reported:
                    found = await AuditEvent.select(AuditEvent.id).where(
                        (AuditEvent.org_id == org) & (AuditEvent.kind.is_in(["call.allow", "call.granted"]))
                        & (AuditEvent.actor_id == str(key)) & (AuditEvent.subject_id == tool[:64])
                    ).first()
                    reported[str(key)] = int(found is not None)
                history.calls_reported_by_agent = reported[str(key)]
            history.agent_declines = await ApprovalRequest.count().where(
                (ApprovalRequest.org == org) & same_agent & (ApprovalRequest.status == "declined")
                & (ApprovalRequest.decided_at >= created - timedelta(days=DECLINE_DAYS))
                & (ApprovalRequest.id != row["id"])
            )
    return histories


async def red_flags_of(rows: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    """Each request's flags, their history read together (`load_histories`)."""
    histories = await load_histories(rows)
    return [[flag.to_dict() for flag in compute(row, history)] for row, history in zip(rows, histories, strict=True)]


async def red_flags(row: dict[str, Any]) -> list[dict[str, str]]:
    [flags] = await red_flags_of([row])
    return flags
