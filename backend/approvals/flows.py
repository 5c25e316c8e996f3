"""Every state change of an approval request, in one place: votes, deadlines, audit, wake-ups."""

from __future__ import annotations

import functools
import json
import logging
import operator
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from backend import db
from backend.accounts import passkeys
from backend.accounts.passkeys import StepUpProof
from backend.accounts.service import Principal
from backend.accounts.tables import TeamMembership, User
from backend.approvals.tables import ApprovalRequest, Grant, Vote
from backend.audit import service as audit
from backend.audit.service import Actor, record
from backend.errors import Conflict, Forbidden, ValidationFailed
from backend.events import event_message
from backend.notifications import service as notifications
from backend.observability import metrics
from backend.transactions import after_commit as after_commit
from backend.transactions import current_transaction, is_sqlite, one_statement, write_transaction

if TYPE_CHECKING:
    from backend.effects import Effects

logger = logging.getLogger("preloop.approvals")

DECIDED = frozenset({"approved", "declined", "expired", "cancelled", "executing", "executed", "failed"})
Effect = Callable[[], Awaitable[None]]
# Column defaults of a fresh request that `create_request` does not set.
NEW_ROW: dict[str, Any] = {
    "decided_at": None,
    "outcome": None,
    "grant_seconds": 0,
    "executed_at": None,
    "execution": None,
    "vote_version": 0,
}


def approval_topic(request_id: uuid.UUID | str) -> str:
    """Bus topic that wakes the long-polls waiting on one request."""
    return f"approval:{request_id}"


def now() -> datetime:
    return datetime.now(UTC)


# --- a transaction whose announcements wait for the commit ----------------------------------

# One after-commit mechanism for the whole backend lives in backend.transactions: bus messages and
# jobs registered with `after_commit` inside a `unit_of_work()` (a write transaction) run only once
# the outermost transaction commits, so a woken waiter never reads the old row.
unit_of_work = write_transaction


# --- rows -------------------------------------------------------------------------------------


def parse_id(value: Any) -> uuid.UUID | None:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


async def load_row(request_id: uuid.UUID | str) -> dict[str, Any] | None:
    rid = parse_id(request_id)
    if rid is None:
        return None
    return await ApprovalRequest.select().where(ApprovalRequest.id == rid).output(load_json=True).first()


# PostgreSQL: the request, its requester's email and its votes in one round trip (what an answer
# shows besides the row). The extra keys ride on the row; `serialize` reads only the table's columns.
_VOTES_JSON = """(SELECT coalesce(json_agg(json_build_object(
      'request', v.request, 'user', v."user", 'email', vu.email, 'decision', v.decision, 'reason', v.reason,
      'channel', v.channel, 'assertion', v.assertion IS NOT NULL,
      'created_at', to_char(v.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))
    ORDER BY v.created_at), '[]'::json)
   FROM vote v JOIN app_user vu ON vu.id = v."user" WHERE v.request = r.id) AS _votes"""
_PRESENTED_SQL = (
    f"SELECT r.*, u.email AS _requester_email, {_VOTES_JSON} "
    "FROM approval_request r LEFT JOIN app_user u ON u.id = r.requester WHERE r.id = {}"
)
_JSON_COLUMNS = tuple(c._meta.name for c in ApprovalRequest._meta.json_columns)


def decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A request row read with raw SQL, its JSON columns decoded as `.output(load_json=True)` does."""
    for name in _JSON_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


async def load_presented(request_id: uuid.UUID | str) -> dict[str, Any] | None:
    """`load_row`, and on PostgreSQL also `_votes` (as `vote_view` shows them) and `_requester_email`
    from the same statement, so answering about the row needs no further reads."""
    rid = parse_id(request_id)
    if rid is None or is_sqlite():
        return await load_row(request_id) if rid is not None else None
    rows = await db.fetch(_PRESENTED_SQL, rid)
    if not rows:
        return None
    return _presented(rows[0])


def _presented(record: Any) -> dict[str, Any]:
    row = decode_json_columns(dict(record))
    votes = row["_votes"]
    votes = json.loads(votes) if isinstance(votes, str) else votes
    row["_votes"] = [vote_view({**v, "assertion": True if v["assertion"] else None}) for v in votes]
    return row


async def load_locked(request_id: uuid.UUID) -> dict[str, Any] | None:
    """The request, locked until the surrounding write transaction ends: what serializes votes,
    deadlines and cancels of one request. PostgreSQL: `SELECT ... FOR UPDATE` (the lock and the read in
    one round trip); SQLite: the immediate transaction already holds the only write lock."""
    if not is_sqlite():  # raw: the query builder costs more CPU than this statement's round trip
        rows = await db.fetch("SELECT * FROM approval_request WHERE id = {} FOR UPDATE", request_id)
        return decode_json_columns(dict(rows[0])) if rows else None
    return await ApprovalRequest.select().where(ApprovalRequest.id == request_id).output(load_json=True).first()


def policy_of(row: dict[str, Any]) -> dict[str, Any]:
    return row.get("approval_policy") or {}


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def user_ref(user_id: Any, email: str) -> dict[str, Any]:
    return {"type": "user", "id": str(user_id), "email": email}


# --- who may vote -------------------------------------------------------------------------------


def _named_voters(row: dict[str, Any], *, include_future_levels: bool = False) -> tuple[set[str], set[str]]:
    """(emails, team names) the request's policy lets vote now (`eligible_users` finds who they are)."""
    policy = policy_of(row)
    emails: set[str] = {e.lower() for e in policy.get("approvers", [])}
    teams: set[str] = set(policy.get("teams", []))
    for index, level in enumerate(policy.get("escalation", [])):
        if include_future_levels or index < int(row.get("escalation_level") or 0):
            emails.update(e.lower() for e in level.get("users", []))
            teams.update(level.get("teams", []))
    return emails, teams


def eligibility_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What `eligible_users(row)` depends on besides the users and teams themselves: rows with the same key
    have the same eligible voters."""
    emails, teams = _named_voters(row)
    return str(row["org"]), tuple(sorted(emails)), tuple(sorted(teams)), str(row.get("requester") or "")


async def eligible_users(row: dict[str, Any], *, include_future_levels: bool = False) -> dict[str, str]:
    """User id -> email of everyone who may vote now: named approvers, team members and the
    targets of escalation levels that have fired. The requesting key's owner is never eligible."""
    emails, teams = _named_voters(row, include_future_levels=include_future_levels)
    if not is_sqlite():  # the fan-out's own definition of who is asked, as one prepared statement
        return await notifications.eligible_in_sql(row["org"], row, sorted(emails), sorted(teams))
    named: list[Any] = []
    if teams:  # members of the named teams, as a sub-select: one statement for teams and people alike
        members = TeamMembership.select(TeamMembership.user).where(
            (TeamMembership.team.org == row["org"]) & (TeamMembership.team.name.is_in(sorted(teams)))
        )
        named.append(User.id.is_in(members))
    if emails:
        named.append(User.email.is_in(sorted(emails)))
    if not named:
        return {}
    users = await User.select(User.id, User.email).where(
        (User.org == row["org"]) & (User.is_active == True) & functools.reduce(operator.or_, named)  # noqa: E712
    )
    found = {str(u["id"]): u["email"] for u in users}
    requester = str(row.get("requester") or "")
    found.pop(requester, None)
    return found


async def level_targets(row: dict[str, Any], level: int) -> dict[str, str]:
    """Users an escalation level adds (people already eligible before it are not re-notified)."""
    before = await eligible_users({**row, "escalation_level": level - 1})
    after = await eligible_users({**row, "escalation_level": level})
    return {uid: email for uid, email in after.items() if uid not in before}


# --- the one place where state changes --------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """Extra facts for one transition."""

    outcome: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None


async def transition(
    hub: Effects,
    row: dict[str, Any] | None,
    new: str,
    actor: Actor,
    change: Change | None = None,
    *,
    alone: bool = False,
) -> dict[str, Any] | None:
    """Move a request from its current state to `new`; None when someone else moved it first.

    Must run inside `unit_of_work()`. The UPDATE is conditional on the old state, so of any
    number of racing callers exactly one wins and only the winner's audit event and
    announcements happen. A new request (`row` None) is None when the same call already has an open
    request (PostgreSQL's `approval_request_open_call` index).

    `alone` (PostgreSQL, a new request, inside `one_statement()`): the insert is its own transaction,
    with no create lock before it, so it also inserts nothing (None) when a grant covers the call or
    the org has no audit chain head yet; the caller then takes the locked path.
    """
    change = change or Change()
    old = row["status"] if row is not None else None
    stamp = now()
    values: dict[str, Any]
    updated: dict[str, Any] | None
    match (old, new):
        case (None, "pending"):
            assert change.values is not None
            updated = {**NEW_ROW, **change.values}
            facts = {
                "tool": updated["tool"],
                "server": updated["server"],
                "arguments_hash": updated["arguments_hash"],
                "agent": updated["agent_name"],
                "rule": updated["rule"],
                "policy_version": updated["policy_version"],
                "approval_policy": policy_of(updated).get("name"),
                "expires_at": str(updated["expires_at"]),
                **({"require_passkey": True} if policy_of(updated).get("require_passkey") else {}),
            }
            if is_sqlite():
                await ApprovalRequest.insert(ApprovalRequest(**change.values))
                await _audit(updated, "approval.requested", actor, change, facts)
                await _notify(hub, updated, level=0, users=None)
            elif not await _insert_asked_and_audited(hub, updated, actor, change, facts, alone=alone):
                return None
            _schedule(hub, updated)
            _announce(hub, updated, "approval.requested")
            return updated
        case ("pending", "approved" | "declined" | "expired" | "cancelled"):
            values = _decision(new, stamp, change.outcome)
        case ("approved", "cancelled"):
            values = {"status": new, "outcome": change.outcome}
        case ("approved", "executing"):
            values = {"status": new, "execution": {"claimed_at": stamp.isoformat(), **(change.values or {})}}
        case ("executing", "executed" | "failed"):
            execution = {**((row or {}).get("execution") or {}), **(change.values or {})}
            values = {"status": new, "executed_at": stamp, "execution": execution}
        case ("pending", "escalated"):
            values = dict(change.values or {})
        case _:
            raise Conflict(
                f"a request that is {old} cannot become {new}",
                detail={"status": old, "wanted": new},
                code="invalid_transition",
            )
    assert row is not None
    if new not in ("escalated", "executing") and not is_sqlite():  # a change whose outcome people are told
        told = await _update_and_tell(row, values)
        if told is None:
            return None
        updated, created = told
        await _after_update(hub, old, new, updated, actor, change, told=created)
        return updated
    updated = await _conditional_update(row, values, same_level=new == "escalated")
    if updated is None:
        return None
    await _after_update(hub, old, new, updated, actor, change)
    return updated


async def _after_update(
    hub: Effects,
    old: str | None,
    new: str,
    updated: dict[str, Any],
    actor: Actor,
    change: Change,
    *,
    told: list[dict[str, Any]] | None = None,
) -> None:
    """What follows a won conditional update: the audit event, notifications, jobs and wake-ups.
    `told`: the outcome's delivery rows, when the update's own statement queued them."""
    if old == "pending" and new != "escalated":
        _observe_decision(updated)
    match (old, new):
        case ("pending", "escalated"):
            level = int(updated["escalation_level"])
            await _audit(updated, "approval.escalated", actor, change, {"level": level})
            await _notify(hub, updated, level=level, users=await level_targets(updated, level))
            _schedule(hub, updated)
            _announce(hub, updated, "approval.escalated")
        case ("pending", "approved"):
            await _audit(updated, "approval.approved", actor, change, {"outcome": change.outcome})
            if int(updated.get("grant_seconds") or 0) > 0:
                await _create_grant(updated, actor)
            await _notify_outcome(hub, updated, told)
            _announce(hub, updated, "approval.approved")
        case (_, "executing" | "executed" | "failed"):
            await _audit(updated, f"approval.{new}", actor, change, {"execution": updated.get("execution")})
            if new != "executing":
                await _notify_outcome(hub, updated, told)
            _announce(hub, updated, f"approval.{new}")
        case _:
            await _audit(updated, f"approval.{new}", actor, change, {"outcome": change.outcome, "from": old})
            await _notify_outcome(hub, updated, told)
            _announce(hub, updated, f"approval.{new}")


_MERGE_EXECUTION = "executed_at = {}, execution = coalesce(execution, jsonb_build_object()) || {}::jsonb"
_RUN_SQL = {
    "executing": "status = 'executing', execution = {}::jsonb",
    "executed": f"status = 'executed', {_MERGE_EXECUTION}",
    "failed": f"status = 'failed', {_MERGE_EXECUTION}",
}
_RUN_FROM = {"executing": "approved", "executed": "executing", "failed": "executing"}
_DELIVERED_JSON = (
    """(SELECT json_agg(json_build_object('id', d.id, 'user', d."user", 'channel', d.channel)) FROM delivered d)"""
)
"""The delivery rows a fan-out CTE named `delivered` inserted, as `notifications.created_from_json` reads them."""


async def run_step(
    hub: Effects,
    principal: Principal,
    request_id: uuid.UUID,
    new: str,
    values: dict[str, Any],
    *,
    arguments_hash: str | None = None,
) -> dict[str, Any] | None:
    """PostgreSQL: claim (`executing`) or report (`executed`/`failed`) a request in one statement, its own
    transaction: a conditional UPDATE that also checks what the caller must be (the request's agent key or
    an admin, and for a claim the approved arguments hash), the audit event chained in the same statement
    (the request row locks before the chain head), a report's outcome notifications, and the row as
    `load_presented` reads it. Wake-ups and jobs follow once it has run.

    None when any condition fails, with nothing written; the caller then reads the row to say which (and,
    if nothing was wrong after all, e.g. on SQLite, takes the ordinary path through `transition`).
    """
    if is_sqlite() or not all(v is None or isinstance(v, str | bool) for v in values.values()):
        return None  # the audit's canonical JSON is built in SQL for flat strings, booleans and nulls only
    stamp = now()
    if new == "executing":
        execution: dict[str, Any] = {"claimed_at": stamp.isoformat(), **values}
        args: list[Any] = [json.dumps(execution)]
    else:
        args = [stamp, json.dumps(values)]
    update = (
        f"UPDATE approval_request r SET {_RUN_SQL[new]} "
        "WHERE r.id = {} AND r.org = {} AND r.status = {}"
    )
    args += [request_id, principal.org_id, _RUN_FROM[new]]
    if not principal.is_admin:
        update += " AND r.agent_key = {}"
        args.append(principal.key_id)
    if arguments_hash is not None:
        update += " AND r.arguments_hash = {}"
        args.append(arguments_hash)
    # The chain head exists (the request's creation was audited); the merged execution stays flat.
    update += (
        " AND EXISTS (SELECT 1 FROM audit_head h WHERE h.org_id = {})"
        " AND NOT EXISTS (SELECT 1 FROM jsonb_each(coalesce(r.execution, jsonb_build_object())) e"
        " WHERE jsonb_typeof(e.value) NOT IN ('string', 'boolean', 'null'))"
        " RETURNING r.*, (SELECT email FROM app_user u WHERE u.id = r.requester) AS _requester_email, "
        + _VOTES_JSON
    )
    args.append(str(principal.org_id))
    event = audit.event_row(
        principal.org_id, f"approval.{new}", principal.actor, "approval", request_id, {"execution": audit.HOLE}, stamp
    )
    audit_sql, audit_args = audit.chained_event_sql(event, hole=audit.canonical_object_sql("s.execution"), after="upd")
    sql = f"WITH upd AS ({update}), {audit_sql}"
    args += audit_args
    delivered = "NULL"
    if new != "executing":
        outcome_sql, outcome_args = notifications.outcome_after_sql("upd")
        sql += f", {outcome_sql}"
        args += outcome_args
        delivered = _DELIVERED_JSON
    sql += f" SELECT u.*, (SELECT count(*) FROM logged) AS _logged, {delivered} AS _delivered FROM upd u"
    async with one_statement():
        rows = await db.fetch(sql, *args)
        if not rows:
            return None
        found = dict(rows[0])
        if found.pop("_logged") != 1:  # cannot happen: the UPDATE ran only where the chain head exists
            logger.error("run_step: %s of request %s was not audited", new, request_id)
        created = notifications.created_from_json(found.pop("_delivered"))
        updated = _presented(found)
        if new != "executing":
            _send_after_commit(hub, updated, created, level=int(updated.get("escalation_level") or 0), announce=False)
        _announce(hub, updated, f"approval.{new}")
    return updated


def _decision(new: str, stamp: datetime, outcome: dict[str, Any] | None) -> dict[str, Any]:
    """The columns a pending request's decision (or deadline) writes."""
    return {"status": new, "decided_at": stamp, "outcome": outcome, "next_escalation_at": None}


def _set_sql(values: dict[str, Any]) -> tuple[str, list[Any]]:
    """`"column" = {}` assignments for an UPDATE of approval_request (JSON columns cast), and their arguments."""
    names = list(values)
    sets = ", ".join(f'"{n}" = {{}}::jsonb' if n in _JSON_COLUMNS else f'"{n}" = {{}}' for n in names)
    return sets, [_json_arg(values[n]) if n in _JSON_COLUMNS else values[n] for n in names]


async def _update_and_tell(
    row: dict[str, Any], values: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """PostgreSQL: `_conditional_update` and `notifications.queue_outcome` in one statement: (the row,
    the outcome's delivery rows), or None when the row had already moved (nothing written)."""
    sets, set_args = _set_sql(values)
    outcome_sql, outcome_args = notifications.outcome_after_sql("upd")
    [found] = await db.fetch(
        f"WITH upd AS (UPDATE approval_request SET {sets} WHERE id = {{}} AND status = {{}} RETURNING *), "
        f"{outcome_sql} SELECT EXISTS (SELECT 1 FROM upd) AS _updated, {_DELIVERED_JSON} AS _delivered",
        *set_args,
        row["id"],
        row["status"],
        *outcome_args,
    )
    if not found["_updated"]:
        return None
    return {**row, **values}, notifications.created_from_json(found["_delivered"])


async def _conditional_update(
    row: dict[str, Any], values: dict[str, Any], *, same_level: bool
) -> dict[str, Any] | None:
    condition = (ApprovalRequest.id == row["id"]) & (ApprovalRequest.status == row["status"])
    if same_level:
        condition &= ApprovalRequest.escalation_level == int(row["escalation_level"])
    columns = {getattr(ApprovalRequest, name): value for name, value in values.items()}
    changed = await ApprovalRequest.update(columns).where(condition).returning(ApprovalRequest.id)
    if not changed:
        return None
    return {**row, **values}


async def _audit(row: dict[str, Any], kind: str, actor: Actor, change: Change, data: dict[str, Any]) -> None:
    await record(
        row["org"],
        kind,
        actor,
        subject_type="approval",
        subject_id=row["id"],
        data={**data, **(change.audit or {})},
    )


def _asked(row: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(emails, teams, channels) of the ask to everyone eligible now, as the SQL fan-outs take them."""
    emails, teams = _named_voters(row)
    return sorted(emails), sorted(teams), policy_of(row).get("channels") or ["web"]


_OPEN_CALL = (
    "(org, tool, server, arguments_hash, (coalesce(agent_key, '00000000-0000-0000-0000-000000000000'::uuid))) "
    "WHERE status IN ('pending', 'approved')"
)
"""The conflict target of `approval_request_open_call`: one open request per call (see its migration)."""
_INSERT_REQUEST_SQL = (
    "INSERT INTO approval_request ("
    + ", ".join(c._meta.db_column_name for c in ApprovalRequest._meta.columns)
    + ") SELECT "
    + ", ".join(
        "{}::" + ("jsonb" if c._meta.name in _JSON_COLUMNS else c.column_type) for c in ApprovalRequest._meta.columns
    )
    + " %(guard)s ON CONFLICT "
    + _OPEN_CALL
    + " DO NOTHING RETURNING id"
)
_ALONE_GUARD = """WHERE EXISTS (SELECT 1 FROM audit_head WHERE org_id = {}::text) AND NOT EXISTS (
    SELECT 1 FROM approval_grant g WHERE g.org = {} AND g.tool = {} AND g.server = {} AND g.arguments_hash = {}
       AND g.revoked_at IS NULL AND g.expires_at > {} AND g.agent_key IS NOT DISTINCT FROM {}::uuid)"""
"""A create without the create lock inserts only when the org's chain head exists (its event is appended in
the same statement) and no grant covers the call (the locked path uses the grant)."""


async def _insert_asked_and_audited(
    hub: Effects, row: dict[str, Any], actor: Actor, change: Change, facts: dict[str, Any], *, alone: bool
) -> bool:
    """PostgreSQL: a new request, the ask to everyone eligible (`_notify`'s rows) and its
    `approval.requested` event in one statement; False (nothing written) when the call already has an
    open request, or, `alone`, when `transition` says so. Not `alone`, it runs inside the create's unit
    of work, and the org's very first event (no chain head yet) is appended the usual way, before the
    commit."""
    insert_args = [
        _json_arg(row[c._meta.name]) if c._meta.name in _JSON_COLUMNS else row[c._meta.name]
        for c in ApprovalRequest._meta.columns
    ]
    if alone:
        guard = _ALONE_GUARD
        insert_args += [str(row["org"]), row["org"], row["tool"], row["server"], row["arguments_hash"], now(),
                        row["agent_key"]]
    else:
        guard = ""
    emails, teams, channels = _asked(row)
    ask_sql, ask_args = notifications.eligible_cte_sql(
        row["org"], row, emails, teams, channels, level=0, after="ins"
    )
    event = audit.event_row(
        row["org"], "approval.requested", actor, "approval", row["id"], {**facts, **(change.audit or {})}, now()
    )
    audit_sql, audit_args = audit.chained_event_sql(event, after="ins")
    [found] = await db.fetch(
        f"WITH ins AS ({_INSERT_REQUEST_SQL % {'guard': guard}}), {ask_sql}, {audit_sql} "
        f"SELECT (SELECT count(*) FROM ins) AS _inserted, (SELECT count(*) FROM logged) AS _logged, "
        f"{_DELIVERED_JSON} AS _delivered",
        *insert_args,
        *ask_args,
        *audit_args,
    )
    if not found["_inserted"]:
        return False
    if found["_logged"] != 1:
        assert not alone, "the guard inserts only where the chain head exists"
        await _audit(row, "approval.requested", actor, change, facts)
    _send_after_commit(hub, row, notifications.created_from_json(found["_delivered"]), level=0)
    return True


async def _notify(hub: Effects, row: dict[str, Any], *, level: int, users: dict[str, str] | None) -> None:
    """Queue the ask to `users`; None: to everyone eligible now (found in the same statement on PostgreSQL)."""
    channels = policy_of(row).get("channels") or ["web"]
    if users is None and not is_sqlite():
        emails, teams, channels = _asked(row)
        created = await notifications.queue_to_eligible_in_sql(row["org"], row, emails, teams, channels, level=level)
    else:
        users = await eligible_users(row) if users is None else users
        created = await notifications.queue_deliveries(row["org"], row, users.items(), channels, level=level)
    _send_after_commit(hub, row, created, level=level)


async def _notify_outcome(hub: Effects, row: dict[str, Any], told: list[dict[str, Any]] | None = None) -> None:
    """The outcome to everyone who was notified, on the channels they were notified on (`told`: already
    queued by the statement that changed the row)."""
    created = await notifications.queue_outcome(row["org"], row) if told is None else told
    # Only enqueued: the decision's own event already tells consoles; "notifications.queued" is for asks.
    _send_after_commit(hub, row, created, level=int(row.get("escalation_level") or 0), announce=False)


def _send_after_commit(
    hub: Effects, row: dict[str, Any], created: list[dict[str, Any]], *, level: int, announce: bool = True
) -> None:
    if not created:
        return

    async def send() -> None:
        await notifications.enqueue(hub, created)
        if announce:
            await notifications.announce(hub.bus, row["org"], row["id"], created, level=level)

    after_commit(send)


def reminder_due(row: dict[str, Any]) -> datetime | None:
    """Half-way between creation and the deadline: when non-voters get a reminder."""
    created, expires = _ts(row.get("created_at")), _ts(row.get("expires_at"))
    if created is None or expires is None or expires <= created:
        return None
    return created + (expires - created) / 2


async def fire_reminder(hub: Effects, request_id: uuid.UUID | str) -> int:
    """Remind everyone who may vote and has not, once per request; returns the deliveries queued."""
    row = await load_row(request_id)
    if row is None or row["status"] != "pending":
        return 0
    due = reminder_due(row)
    if due is None or due > now():
        return 0
    async with unit_of_work():
        voted = {str(v["user"]) for v in await Vote.select(Vote.user).where(Vote.request == row["id"])}
        waiting = {uid: email for uid, email in (await eligible_users(row)).items() if uid not in voted}
        channels = policy_of(row).get("channels") or ["web"]
        level = int(row.get("escalation_level") or 0)
        created = await notifications.queue_deliveries(
            row["org"], row, waiting.items(), channels, level=level, event="reminder"
        )
        _send_after_commit(hub, row, created, level=level)
    return len(created)


async def sweep_reminders(hub: Effects, batch: int = 500) -> int:
    """Reminders whose job was lost: pending requests past half-time (the dedupe keys make it once)."""
    rows = (
        await ApprovalRequest.select(ApprovalRequest.id, ApprovalRequest.created_at, ApprovalRequest.expires_at)
        .where((ApprovalRequest.status == "pending") & (ApprovalRequest.expires_at.is_not_null()))
        .order_by(ApprovalRequest.expires_at)
        .limit(batch)
    )
    stamp = now()
    due = [r["id"] for r in rows if (reminder_due(r) or stamp) < stamp]
    if not due:
        return 0
    reminded = await notifications.reminded_requests(due)
    fired = 0
    for rid in due:
        if str(rid) not in reminded:
            fired += await fire_reminder(hub, rid)
    return fired


def _schedule(hub: Effects, row: dict[str, Any]) -> None:
    """Queue the deadline jobs for what the row says is due; the ids make repeats harmless."""
    rid = str(row["id"])
    expires = _ts(row.get("expires_at"))
    escalates = _ts(row.get("next_escalation_at"))
    level = int(row.get("escalation_level") or 0) + 1

    remind = reminder_due(row) if row["escalation_level"] == 0 and row["status"] == "pending" else None

    jobs: list[tuple[str, tuple[Any, ...], str, datetime | None]] = []
    if expires is not None and row["escalation_level"] == 0:
        jobs.append(("expire_request", (rid,), f"expire:{rid}", expires))
    if remind is not None:
        jobs.append(("remind_request", (rid,), f"remind:{rid}", remind))
    if escalates is not None:
        jobs.append(("escalate_request", (rid, level), f"escalate:{rid}:{level}", escalates))

    async def enqueue() -> None:
        await notifications.enqueue_many(hub, jobs)  # one Redis round trip for all of them

    if jobs:
        after_commit(enqueue)


def _observe_decision(row: dict[str, Any]) -> None:
    async def observe() -> None:
        metrics.record_decision(row["status"], _ts(row.get("created_at")), _ts(row.get("decided_at")))

    after_commit(observe)


def _observe_deadline(kind: str, due: Any, fired: dict[str, Any] | None) -> bool:
    """Record how late a deadline fired (once its transaction commits); True if it fired."""
    if fired is None:
        return False
    stamp = now()

    async def observe() -> None:
        metrics.record_deadline_lag(kind, _ts(due), stamp)

    after_commit(observe)
    return True


def _announce(hub: Effects, row: dict[str, Any], kind: str) -> None:
    message = {"id": str(row["id"]), "status": row["status"], "escalation_level": row["escalation_level"]}

    async def publish() -> None:
        sends = [
            event_message(
                row["org"],
                kind,
                {
                    "request_id": str(row["id"]),
                    "tool": row["tool"],
                    "status": row["status"],
                    "outcome": row.get("outcome"),
                },
            )
        ]
        if row["status"] != "pending":
            sends.insert(0, (approval_topic(row["id"]), message))
        await hub.bus.publish_many(sends)  # both messages in one PUBLISH

    after_commit(publish)


async def _create_grant(row: dict[str, Any], actor: Actor) -> None:
    decided = _ts(row["decided_at"]) or now()
    grant = Grant(
        org=row["org"],
        request=row["id"],
        agent_key=row["agent_key"],
        tool=row["tool"],
        server=row["server"],
        arguments_hash=row["arguments_hash"],
        granted_by=parse_id(actor.id) if actor.type == "user" else None,
        created_at=decided,
        expires_at=decided + timedelta(seconds=int(row["grant_seconds"])),
    )
    await grant.save()
    await record(
        row["org"],
        "grant.created",
        actor,
        subject_type="grant",
        subject_id=grant.id,
        data={
            "request_id": str(row["id"]),
            "tool": row["tool"],
            "server": row["server"],
            "arguments_hash": row["arguments_hash"],
            "seconds": int(row["grant_seconds"]),
            "expires_at": grant.expires_at.isoformat(),
        },
    )


# --- votes --------------------------------------------------------------------------------------


async def votes_of(request_ids: uuid.UUID | list[Any]) -> list[dict[str, Any]]:
    """Votes of one request (or several), oldest first, with each voter's email."""
    ids = request_ids if isinstance(request_ids, list) else [request_ids]
    return list(
        await Vote.select(
            Vote.request,
            Vote.user,
            Vote.decision,
            Vote.reason,
            Vote.channel,
            Vote.created_at,
            Vote.assertion,
            Vote.user.email.as_alias("email"),
        )
        .where(Vote.request.is_in(ids))
        .order_by(Vote.created_at)
    )


_VOTE_COLUMNS = ("id", "request", "user", "request_user", "decision", "reason", "channel", "created_at", "assertion")
_INSERT_VOTE_SQL = f"""
WITH ins AS (
  INSERT INTO vote ({", ".join(f'"{c}"' for c in _VOTE_COLUMNS)})
  VALUES ({", ".join("{}::jsonb" if c == "assertion" else "{}" for c in _VOTE_COLUMNS)})
  RETURNING request, "user", decision, reason, channel, created_at, assertion
), bump AS (
  UPDATE approval_request SET vote_version = vote_version + 1 WHERE id = (SELECT request FROM ins)
)
SELECT v.request, v."user", v.decision, v.reason, v.channel, v.created_at, v.assertion, u.email
  FROM vote v JOIN app_user u ON u.id = v."user" WHERE v.request = {{}}
UNION ALL
SELECT i.request, i."user", i.decision, i.reason, i.channel, i.created_at, i.assertion, u.email
  FROM ins i JOIN app_user u ON u.id = i."user"
ORDER BY created_at
"""


async def _insert_vote(ballot: Vote) -> list[dict[str, Any]]:
    """Store a vote and move the request's `vote_version` on; return the request's votes (this one
    included) as `votes_of` does. PostgreSQL: one statement (the insert, the version and the read)."""
    if is_sqlite():
        await ballot.save()
        await ApprovalRequest.update({ApprovalRequest.vote_version: ApprovalRequest.vote_version + 1}).where(
            ApprovalRequest.id == ballot.request
        )
        return await votes_of(ballot.request)
    args = [
        _json_arg(getattr(ballot, c)) if c == "assertion" else getattr(ballot, c) for c in _VOTE_COLUMNS
    ]
    return [dict(r) for r in await db.fetch(_INSERT_VOTE_SQL, *args, ballot.request)]


def _json_arg(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def vote_view(v: dict[str, Any]) -> dict[str, Any]:
    """One vote as the API shows it."""
    created = v["created_at"]
    return {
        "user": {"id": str(v["user"]), "email": v["email"]},
        "decision": v["decision"],
        "reason": v["reason"],
        "channel": v["channel"],
        "created_at": created.isoformat() if isinstance(created, datetime) else (str(created) if created else None),
        "passkey_confirmed": v["assertion"] is not None,
    }


def voter(principal: Principal) -> Actor:
    return Actor("user", str(principal.user_id), principal.email)


async def reject_vote(row: dict[str, Any], principal: Principal, why: str, message: str) -> Forbidden:
    """Audit a vote that is not allowed, in its own committed transaction; return the 403 to raise.

    The caller's transaction (an email link spending its token, a batch) rolls back when the 403
    propagates, so the refusal is never written inside it: inside one, it is written as soon as that
    transaction has ended, committed or not (a single-writer SQLite cannot open a second one meanwhile).
    """

    async def audit() -> None:
        await record(
            row["org"],
            "approval.vote_rejected",
            principal.actor,
            subject_type="approval",
            subject_id=row["id"],
            data={"why": why, "email": principal.email, "via": principal.via},
        )

    enclosing = current_transaction()
    if enclosing is not None:
        enclosing.after_end.append(audit)
    else:
        await audit()
    return Forbidden(message, code=why, detail={"request_id": str(row["id"])})


async def record_vote(
    hub: Effects,
    principal: Principal,
    row: dict[str, Any],
    decision: str,
    *,
    reason: str | None = None,
    grant_seconds: int = 0,
    channel: str = "api",
    assertion: dict[str, Any] | StepUpProof | None = None,
    seen_votes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Store one person's vote and decide the request when it settles it.

    `seen_votes`, when given, is filled with the request's votes as the API shows them (read under
    the request's lock, this vote included), so the caller can answer without reading them again.

    `assertion` is a passkey step-up (the browser's PublicKeyCredential as JSON, or a proof a batch
    already verified). A request whose policy says `require_passkey` counts only a vote from an app
    session carrying one whose challenge names this request, this decision and these arguments.
    """
    policy = policy_of(row)
    if principal.via == "key" and principal.scope == "agent":
        raise await reject_vote(
            row,
            principal,
            "agent_cannot_vote",
            "agent keys cannot vote; use an approver-scoped key or a login",
        )
    if str(principal.user_id) == str(row.get("requester") or ""):
        raise await reject_vote(
            row, principal, "own_request", "you own the key that made this request, so you cannot vote on it"
        )
    if not principal.can_decide:
        # Viewers never decide, even when a policy or a team names them.
        raise await reject_vote(
            row,
            principal,
            "role_cannot_vote",
            f"{principal.email} is a {principal.role}; only approvers and admins approve or decline",
        )
    reason = (reason or "").strip() or None
    state = current_transaction()
    # SQLite, or events already waiting for the enclosing commit (the locked path keeps their order): no tries.
    tries = 0 if is_sqlite() or (state is not None and state.scratch.get("audit")) else 5
    # The vote's own statement checks eligibility when nothing below could refuse the vote first.
    in_statement = tries > 0 and _eligibility_in_statement(row, principal, decision, reason, grant_seconds, assertion)
    if not in_statement:
        await _require_eligible(row, principal)
    if decision == "decline" and policy.get("require_decline_reason") and not reason:
        raise ValidationFailed(
            "this policy requires a reason to decline", code="reason_required", detail={"field": "reason"}
        )
    if grant_seconds < 0:
        raise ValidationFailed("grant_seconds cannot be negative", detail={"field": "grant_seconds"})
    if decision == "approve" and grant_seconds > 0:
        cap = int(policy.get("max_grant_seconds") or 0)
        if cap <= 0:
            raise ValidationFailed(
                "this request's approval policy does not allow time-boxed grants",
                code="grants_disabled",
                detail={"field": "grant_seconds", "max_grant_seconds": 0},
            )
        grant_seconds = min(grant_seconds, cap)
    proof = await _step_up(hub, principal, row, decision, channel, assertion)
    for _ in range(tries):
        if decision == "approve" and (grant_seconds or int(row["grant_seconds"])):
            break  # a grant is made by the locked path
        if "_votes" not in row:  # read with its votes and their version, in one statement
            row = await _reread(row["id"])
        if in_statement and not _votable(row, principal):
            # Decided or voted since: only an eligible voter is told so; anyone else hears "not eligible".
            await _require_eligible(row, principal)
            in_statement = False
        async with one_statement():
            result = await _vote_in_sql(
                hub, principal, row, decision, reason=reason, grant_seconds=grant_seconds, channel=channel,
                proof=proof, seen_votes=seen_votes, check_eligible=in_statement,
            )
        if result is _INELIGIBLE:
            raise await reject_vote(row, principal, "not_eligible", _not_eligible_message(principal))
        if result is not None:
            return result
        row = await _reread(row["id"])  # someone voted (or a deadline fired) since `row` was read
    if in_statement:
        await _require_eligible(row, principal)
    async with unit_of_work():
        current = await load_locked(row["id"])
        assert current is not None
        if current["status"] != "pending":
            raise _already_decided(current)
        # The unique `request_user` column refuses a second vote; the transaction then rolls back.
        ballot = _ballot(current, principal, decision, reason, channel, proof, now())
        try:
            votes = await _insert_vote(ballot)
        except (asyncpg.UniqueViolationError, _sqlite_integrity()) as exc:
            raise _already_voted(current) from exc
        await record(
            current["org"],
            f"approval.vote_{decision}",
            voter(principal),
            subject_type="approval",
            subject_id=current["id"],
            data=_vote_facts(current, reason, channel, grant_seconds, proof),
        )
        if seen_votes is not None:
            seen_votes[:] = [vote_view(v) for v in votes]
        approvals = [v for v in votes if v["decision"] == "approve"]
        if decision == "approve" and (grant_seconds or int(current["grant_seconds"])):
            # A grant widens an approval, so every approving voter must ask for it: keep the smallest.
            window = grant_seconds if len(approvals) == 1 else min(int(current["grant_seconds"]), grant_seconds)
            await ApprovalRequest.update({ApprovalRequest.grant_seconds: window}).where(
                ApprovalRequest.id == current["id"]
            )
            current["grant_seconds"] = window
        new, outcome = await _settlement(current, votes, decision, reason)
        result = current
        if new is not None:
            result = await _decide(hub, current, new, voter(principal), outcome)
    return result


async def _require_eligible(row: dict[str, Any], principal: Principal) -> None:
    if str(principal.user_id) not in await eligible_users(row):
        raise await reject_vote(row, principal, "not_eligible", _not_eligible_message(principal))


def _not_eligible_message(principal: Principal) -> str:
    return f"{principal.email} is not an approver of this request"


def _votable(row: dict[str, Any], principal: Principal) -> bool:
    """`row` (read with its votes) is pending and has no vote of `principal`'s."""
    mine = str(principal.user_id)
    return row["status"] == "pending" and "_votes" in row and all(str(v["user"]["id"]) != mine for v in row["_votes"])


def _eligibility_in_statement(
    row: dict[str, Any], principal: Principal, decision: str, reason: str | None, grant_seconds: int,
    assertion: dict[str, Any] | StepUpProof | None,
) -> bool:
    """Whether `_vote_in_sql` may be what checks that `principal` may vote on `row`, instead of a read of
    the eligible voters first: only when none of the checks `record_vote` makes after eligibility (a decline's
    reason, a grant, a passkey, the request still pending and not yet voted on by them) can refuse the vote,
    so that someone who may not vote is always told that, and only that."""
    policy = policy_of(row)
    return (
        not grant_seconds
        and not (decision == "approve" and int(row["grant_seconds"]))
        and not (decision == "decline" and policy.get("require_decline_reason") and not reason)
        and assertion is None
        and not policy.get("require_passkey")
        and _votable(row, principal)
    )


def _ballot(
    row: dict[str, Any], principal: Principal, decision: str, reason: str | None, channel: str,
    proof: StepUpProof | None, stamp: datetime,
) -> Vote:
    return Vote(
        request=row["id"],
        user=principal.user_id,
        request_user=f"{row['id']}:{principal.user_id}",
        decision=decision,
        reason=reason,
        channel=channel[:20],
        created_at=stamp,
        assertion=proof.evidence if proof else None,
    )


def _vote_facts(
    row: dict[str, Any], reason: str | None, channel: str, grant_seconds: int, proof: StepUpProof | None
) -> dict[str, Any]:
    """The data of a vote's audit event."""
    return {
        "reason": reason,
        "channel": channel,
        "grant_seconds": grant_seconds or None,
        **({"arguments_hash": row["arguments_hash"], "step_up": proof.evidence} if proof else {}),
    }


async def _settlement(
    row: dict[str, Any], votes: list[dict[str, Any]], decision: str, reason: str | None
) -> tuple[str | None, dict[str, Any]]:
    """(the status `votes` settle the request in, its outcome), or (None, {}) while it stays pending."""
    quorum = max(1, int(policy_of(row).get("quorum") or 1))
    approvals = [v for v in votes if v["decision"] == "approve"]
    declines = [v for v in votes if v["decision"] == "decline"]
    if len(approvals) >= quorum:
        return "approved", {"kind": "approved", "by": [user_ref(v["user"], v["email"]) for v in approvals],
                            "reason": None}
    if decision == "decline" and await _decline_settles(row, quorum, declines):
        return "declined", {"kind": "declined", "by": [user_ref(v["user"], v["email"]) for v in declines],
                            "reason": reason}
    return None, {}


async def _reread(request_id: uuid.UUID) -> dict[str, Any]:
    row = await load_presented(request_id)
    assert row is not None  # requests are never deleted
    return row


def _votes_read_with(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The votes `load_presented` read with `row` (`vote_view`s), as `votes_of` gives them."""
    return [
        {"request": row["id"], "user": v["user"]["id"], "email": v["user"]["email"], "decision": v["decision"],
         "reason": v["reason"], "channel": v["channel"], "created_at": v["created_at"],
         "assertion": True if v["passkey_confirmed"] else None}
        for v in row["_votes"]
    ]


_INELIGIBLE: dict[str, Any] = {}  # `_vote_in_sql`'s answer when the voter may not vote on the request
_VOTER_ELIGIBLE = 'voter_eligible AS (SELECT 1 FROM eligible WHERE "user" = {}::uuid)'

_VOTE_TYPES = ("uuid", "uuid", "uuid", "varchar", "varchar", "text", "varchar", "timestamptz", "jsonb")
_VOTE_IN_SQL = f"""upd AS (
    UPDATE approval_request SET vote_version = vote_version + 1%(decide)s
     WHERE %(eligible)sid = {{}} AND status = 'pending' AND vote_version = {{}}
       AND EXISTS (SELECT 1 FROM audit_head WHERE org_id = approval_request.org::text)
    RETURNING *
), ins AS (
    INSERT INTO vote ({", ".join(f'"{c}"' for c in _VOTE_COLUMNS)})
    SELECT {", ".join("{}::" + t for t in _VOTE_TYPES)} FROM upd
    RETURNING request
)"""


async def _vote_in_sql(
    hub: Effects,
    principal: Principal,
    current: dict[str, Any],
    decision: str,
    *,
    reason: str | None,
    grant_seconds: int,
    channel: str,
    proof: StepUpProof | None,
    seen_votes: list[dict[str, Any]] | None,
    check_eligible: bool = False,
) -> dict[str, Any] | None:
    """PostgreSQL, in `one_statement()`: the vote on `current` (read by `load_presented`, its votes with it),
    its audit event and, when Python finds the votes settle the request, the decision, the outcome
    deliveries and the decision's event (chained after the vote's), in one statement.

    With `check_eligible` the statement also finds who may vote now (`notifications.eligible_ctes_sql`, the
    definition `eligible_users` reads) and writes only if `principal` is one of them: `_INELIGIBLE` when not.

    The statement's UPDATE moves `vote_version` on, and only from the version read with the votes: of
    racing voters, the first to lock the row writes, and the others (their UPDATE re-checks the row once
    the first has committed) write nothing and get None, to read the request again and decide on the new
    votes. None also when the org has no audit chain head (cannot happen: creating the request made it);
    `record_vote` then takes the locked path."""
    if current["status"] != "pending":
        raise _already_decided(current)
    before = _votes_read_with(current)
    if any(str(v["user"]) == str(principal.user_id) for v in before):
        raise _already_voted(current)
    actor = voter(principal)
    stamp = now()
    ballot = _ballot(current, principal, decision, reason, channel, proof, stamp)
    mine = {
        "request": current["id"], "user": principal.user_id, "email": principal.email, "decision": decision,
        "reason": reason, "channel": ballot.channel, "created_at": stamp, "assertion": ballot.assertion,
    }
    votes = [*before, mine]
    new, outcome = await _settlement(current, votes, decision, reason)
    events = [
        audit.event_row(
            current["org"], f"approval.vote_{decision}", actor, "approval", current["id"],
            _vote_facts(current, reason, channel, grant_seconds, proof),
            datetime.now(UTC),
        )
    ]
    decided = _decision(new, stamp, outcome) if new is not None else {}
    sets, args = _set_sql(decided)
    args += [current["id"], int(current.get("vote_version") or 0)]
    args += [_json_arg(getattr(ballot, c)) if c == "assertion" else getattr(ballot, c) for c in _VOTE_COLUMNS]
    sql = "WITH " + _VOTE_IN_SQL % {
        "decide": f", {sets}" if sets else "",
        "eligible": "EXISTS (SELECT 1 FROM voter_eligible) AND " if check_eligible else "",
    }
    if check_eligible:  # who may vote, and whether the voter is one of them, ahead of everything else
        emails, teams = _named_voters(current)
        people_sql, people_args = notifications.eligible_ctes_sql(
            current["org"], current, sorted(emails), sorted(teams)
        )
        sql = f"WITH {people_sql}, {_VOTER_ELIGIBLE}, {sql.removeprefix('WITH ')}"
        args = [*people_args, principal.user_id, *args]
    delivered = "NULL"
    if new is not None:
        outcome_sql, outcome_args = notifications.outcome_after_sql("upd")
        sql += f", {outcome_sql}"
        args += outcome_args
        delivered = _DELIVERED_JSON
        data = {"outcome": outcome} if new == "approved" else {"outcome": outcome, "from": "pending"}
        events.append(
            audit.event_row(current["org"], f"approval.{new}", actor, "approval", current["id"], data, now())
        )
    audit_sql, audit_args = audit.chained_events_sql(events, after="ins")
    sql += f", {audit_sql} SELECT (SELECT count(*) FROM ins) AS _voted, (SELECT count(*) FROM logged) AS _logged, "
    sql += f"{delivered} AS _delivered"
    args += audit_args
    if check_eligible:
        sql += ", EXISTS (SELECT 1 FROM voter_eligible) AS _eligible"
    try:
        [found] = await db.fetch(sql, *args)
    except asyncpg.UniqueViolationError as exc:
        raise _already_voted(current) from exc
    if not found["_voted"]:
        return _INELIGIBLE if check_eligible and not found["_eligible"] else None
    assert found["_logged"] == len(events), "the UPDATE wrote only where the chain head exists"
    if seen_votes is not None:
        seen_votes[:] = [vote_view(v) for v in votes]
    written = {**current, "vote_version": int(current.get("vote_version") or 0) + 1}
    written.pop("_votes", None)
    if new is None:
        return written
    updated = {**written, **decided}
    _observe_decision(updated)
    created = notifications.created_from_json(found["_delivered"])
    _send_after_commit(hub, updated, created, level=int(updated.get("escalation_level") or 0), announce=False)
    _announce(hub, updated, f"approval.{new}")
    return updated


async def _step_up(
    hub: Effects,
    principal: Principal,
    row: dict[str, Any],
    decision: str,
    channel: str,
    assertion: dict[str, Any] | StepUpProof | None,
) -> StepUpProof | None:
    """The verified passkey confirmation of this vote, or None when the policy does not ask for one."""
    required = bool(policy_of(row).get("require_passkey"))
    if assertion is None and not required:
        return None
    if required and (principal.via != "session" or channel != "app"):
        raise await reject_vote(
            row,
            principal,
            "passkey_required",
            "this request's policy needs a passkey confirmation from the Preloop app; "
            "email links, chat buttons and API keys cannot decide it",
        )
    if assertion is None:
        raise await reject_vote(
            row,
            principal,
            "passkey_required",
            "this request's policy needs a passkey confirmation: "
            f"POST /api/v1/approvals/{row['id']}/step-up/options, then vote with the assertion",
        )
    if not isinstance(assertion, StepUpProof):
        [proof] = await confirm_step_up(hub, principal, [row], decision, assertion)
        return proof
    if assertion.user_id != str(principal.user_id) or not assertion.covers(
        str(row["id"]), row["arguments_hash"], decision
    ):
        raise await reject_vote(
            row, principal, "passkey_wrong_request", "this passkey confirmation was made for another request"
        )
    return assertion


async def confirm_step_up(
    hub: Effects, principal: Principal, rows: list[dict[str, Any]], decision: str, assertion: dict[str, Any]
) -> list[StepUpProof]:
    """Verify one step-up assertion for these requests; a refusal is audited on each of them.

    The proof must cover every listed request with the arguments hash it holds now, so an
    assertion made for another request, decision or argument set does not count.
    """
    assert hub.redis is not None
    try:
        proof = await passkeys.verify_step_up(hub.redis.client, principal, decision, assertion)
    except passkeys.StepUpRefused as exc:
        refusals = [await reject_vote(row, principal, exc.code, exc.message) for row in rows]
        raise refusals[0] from exc
    for row in rows:
        if not proof.covers(str(row["id"]), row["arguments_hash"], decision):
            raise await reject_vote(
                row,
                principal,
                "passkey_wrong_request",
                "this passkey confirmation names other requests or other arguments; confirm this one again",
            )
    return [proof] * len(rows)


async def _decide(hub: Effects, row: dict[str, Any], new: str, actor: Actor, outcome: dict[str, Any]) -> dict[str, Any]:
    updated = await transition(hub, row, new, actor, Change(outcome=outcome))
    if updated is None:  # lost to a deadline or another decision: roll the vote back
        latest = await load_row(row["id"])
        raise _already_decided(latest or row)
    return updated


async def _decline_settles(row: dict[str, Any], quorum: int, declines: list[dict[str, Any]]) -> bool:
    if policy_of(row).get("decline_mode", "immediate") != "when_quorum_unreachable":
        return True
    # Everyone who could still approve, escalation levels yet to fire included.
    possible = await eligible_users(row, include_future_levels=True)
    declined = {str(v["user"]) for v in declines}
    return len(set(possible) - declined) < quorum


def _already_voted(row: dict[str, Any]) -> Conflict:
    return Conflict(
        "you have already voted on this request; a second vote is not counted",
        code="already_voted",
        detail={"request_id": str(row["id"])},
    )


def _already_decided(row: dict[str, Any]) -> Conflict:
    return Conflict(
        f"this request is already {row['status']}",
        code="already_decided",
        detail={"request_id": str(row["id"]), "status": row["status"], "outcome": row.get("outcome")},
    )


def _sqlite_integrity() -> type[Exception]:
    import sqlite3

    return sqlite3.IntegrityError


# --- deadlines ----------------------------------------------------------------------------------


async def fire_expiry(hub: Effects, request_id: uuid.UUID | str) -> bool:
    """Time the request out if its deadline has passed; True if this call did it."""
    row = await load_row(request_id)
    if row is None or row["status"] != "pending" or (_ts(row["expires_at"]) or now()) > now():
        return False
    async with unit_of_work():
        row = await load_locked(row["id"])
        if row is None or row["status"] != "pending":
            return False
        policy = policy_of(row)
        seconds = int(policy.get("timeout_seconds") or 0)
        actor = Actor.system("timeout")
        if policy.get("on_timeout") == "approve":
            outcome = {
                "kind": "approved",
                "by": [],
                "reason": f"approved automatically: no decision within {seconds}s (on_timeout: approve)",
            }
            fired = await transition(hub, row, "approved", actor, Change(outcome=outcome))
            return _observe_deadline("expiry", row["expires_at"], fired)
        outcome = {"kind": "expired", "by": [], "reason": f"no decision within {seconds}s"}
        fired = await transition(hub, row, "expired", actor, Change(outcome=outcome))
        return _observe_deadline("expiry", row["expires_at"], fired)


async def fire_escalation(hub: Effects, request_id: uuid.UUID | str, level: int | None = None) -> bool:
    """Fire the next escalation level if it is due (and is `level`, when given)."""
    row = await load_row(request_id)
    if row is None or row["status"] != "pending" or row["next_escalation_at"] is None:
        return False
    if _ts(row["next_escalation_at"]) > now():  # type: ignore[operator]
        return False
    async with unit_of_work():
        row = await load_locked(row["id"])
        if row is None or row["status"] != "pending" or row["next_escalation_at"] is None:
            return False
        reached = int(row["escalation_level"]) + 1
        if level is not None and level != reached:
            return False
        levels = policy_of(row).get("escalation", [])
        created = _ts(row["created_at"]) or now()
        following = (
            created + timedelta(seconds=int(levels[reached]["after_seconds"])) if reached < len(levels) else None
        )
        change = Change(values={"escalation_level": reached, "next_escalation_at": following})
        fired = await transition(hub, row, "escalated", Actor.system("escalation"), change)
        return _observe_deadline("escalation", row["next_escalation_at"], fired)
