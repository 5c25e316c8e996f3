"""Approval requests changing state, for the REST API, the console, the gateway and the jobs alike."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from backend import db
from backend.accounts import passkeys
from backend.accounts.passkeys import StepUpProof
from backend.accounts.service import Principal
from backend.approvals import flows
from backend.approvals.flows import Change, load_row, now, parse_id, unit_of_work
from backend.approvals.grants import grant_dict
from backend.approvals.presentation import present, present_one, row_in_org, visible_row
from backend.approvals.tables import ApprovalRequest, Grant
from backend.audit.service import record
from backend.errors import Conflict, Forbidden, NotFound, ValidationFailed
from backend.policy_store.service import active_policy
from backend.request_checks import refuse_bidi
from backend.transactions import is_sqlite, lock, one_statement
from policies import AgentInfo, CallContext, arguments_hash

if TYPE_CHECKING:
    from backend.hub import Hub

OPEN_FOR_ATTACH = ("pending", "approved")


# --- creating -----------------------------------------------------------------------------------


async def create_request(
    hub: Hub,
    principal: Principal,
    *,
    tool: str,
    server: str,
    arguments: dict[str, Any],
    hash_hex: str | None,
    justification: str | None,
    input_schema: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Hold a call: (201, new request), (200, attached request) or (200, grant that covers it)."""
    tool = tool.strip()
    if not tool or len(tool) > 300:
        raise ValidationFailed("tool must be 1-300 characters", detail={"field": "tool"})
    refuse_bidi("tool", tool)
    refuse_bidi("server", server)
    if len(server) > 200:
        raise ValidationFailed("server must be at most 200 characters", detail={"field": "server"})
    digest = arguments_hash(arguments)
    if hash_hex is not None and hash_hex != digest:
        raise ValidationFailed(
            "arguments_hash does not match the arguments",
            code="arguments_hash_mismatch",
            detail={
                "expected": digest,
                "got": hash_hex,
                "hint": "sha256 of canonical JSON (sort_keys, no spaces)",
            },
        )
    justification = (justification or "").strip() or None
    found = await active_policy(principal.org_id)
    if found is None:
        raise Conflict(
            "the hub has no active policy, so nothing can be held for approval",
            code="policy_mismatch",
            detail={"action": None, "policy_version": None},
        )
    version_row, policy = found
    decision = policy.evaluate(
        CallContext(
            tool=tool,
            server=server or None,
            args=arguments,
            agent=AgentInfo(
                name=principal.key_name or principal.email,
                id=str(principal.key_id or principal.user_id),
                labels={str(k): str(v) for k, v in principal.labels.items()},
            ),
            justification=justification,
            now=now(),
        )
    )
    if decision.action != "require_approval" or decision.approval_policy is None:
        raise Conflict(
            f"the active policy (version {version_row['version']}) does not require approval for this call: "
            f"{decision.reason}",
            code="policy_mismatch",
            detail={
                "action": decision.action,
                "policy_version": version_row["version"],
                "reason": decision.reason,
                "message": decision.message,
            },
        )
    key_id = principal.key_id
    snapshot = decision.approval_policy.to_dict()
    created = now()
    levels = snapshot.get("escalation") or []
    values = {
        "id": uuid.uuid4(),
        "org": principal.org_id,
        "status": "pending",
        "tool": tool,
        "server": server,
        "arguments": arguments,
        "arguments_hash": digest,
        "agent_key": key_id,
        "agent_name": principal.key_name or principal.email,
        "requester": principal.user_id,
        "justification": justification,
        "policy_version": version_row["version"],
        "rule": decision.rule.to_dict() if decision.rule else {},
        "approval_policy": snapshot,
        "risk": decision.risk,
        "reason": decision.reason,
        "created_at": created,
        "expires_at": created + timedelta(seconds=int(snapshot["timeout_seconds"])),
        "escalation_level": 0,
        "input_schema": input_schema if isinstance(input_schema, dict) else None,
        "next_escalation_at": created + timedelta(seconds=int(levels[0]["after_seconds"])) if levels else None,
    }
    if not is_sqlite():
        # The common case in one statement, without the create lock: the database's one-open-request-per-call
        # index decides a race. A grant, an open request to attach to, or an org's first event take the lock.
        async with one_statement():
            row = await flows.transition(hub, None, "pending", principal.actor, Change(values=values), alone=True)
        if row is not None:
            return 201, {**(await present_one(row, principal, votes=[])), "attached": False}
    same_call = (
        (ApprovalRequest.org == principal.org_id)
        & (ApprovalRequest.tool == tool)
        & (ApprovalRequest.server == server)
        & (ApprovalRequest.arguments_hash == digest)
    )
    same_call &= ApprovalRequest.agent_key == key_id if key_id else ApprovalRequest.agent_key.is_null()
    async with unit_of_work():
        await lock(f"approval-create:{principal.org_id}:{key_id}:{tool}:{server}:{digest}")
        for _ in range(5):
            grant, existing = await _grant_or_open(principal.org_id, key_id, tool, server, digest, same_call)
            if grant is not None:
                await Grant.update({Grant.uses: Grant.uses + 1}).where(Grant.id == grant["id"])
                grant["uses"] += 1
                await record(
                    principal.org_id,
                    "grant.used",
                    principal.actor,
                    subject_type="grant",
                    subject_id=grant["id"],
                    data={"tool": tool, "server": server, "arguments_hash": digest},
                )
                return 200, {"status": "granted", "grant": grant_dict(grant), "id": str(grant["request"])}
            if existing is not None:
                await record(
                    principal.org_id,
                    "approval.attached",
                    principal.actor,
                    subject_type="approval",
                    subject_id=existing["id"],
                    data={"tool": tool},
                )
                return 200, {**(await present([existing]))[0], "attached": True}
            row = await flows.transition(hub, None, "pending", principal.actor, Change(values=values))
            if row is not None:
                break
            # A create without the lock opened the same call after the read above: attach to it.
        else:  # cannot happen: each round either finds the open request or inserts
            raise Conflict("this call's open request kept changing; send it again", code="create_conflict")
    # Created in this call: it has no votes yet.
    return 201, {**(await present_one(row, principal, votes=[])), "attached": False}


_GRANT_OR_OPEN_SQL = """
SELECT
  (SELECT g.id FROM approval_grant g
    WHERE g.org = {org} AND g.tool = {tool} AND g.server = {server} AND g.arguments_hash = {digest}
      AND g.revoked_at IS NULL AND g.expires_at > {stamp} AND g.agent_key %(key)s
    LIMIT 1) AS _grant_id,
  r.*
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
  SELECT * FROM approval_request
   WHERE org = {org} AND tool = {tool} AND server = {server} AND arguments_hash = {digest}
     AND agent_key %(key)s AND status IN ('pending', 'approved')
   ORDER BY created_at DESC LIMIT 1
) AS r ON true
"""


async def _grant_or_open(
    org_id: uuid.UUID, key_id: Any, tool: str, server: str, digest: str, same_call: Any
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Under the create lock: the grant that covers this call, else the open request it attaches to.
    PostgreSQL: one statement for both (the grant's row is read only when there is one)."""
    if is_sqlite():
        grant = await _covering_grant(org_id, key_id, tool, server, digest)
        if grant is not None:
            return grant, None
        existing = (
            await ApprovalRequest.select()
            .where(same_call & ApprovalRequest.status.is_in(list(OPEN_FOR_ATTACH)))
            .order_by(ApprovalRequest.created_at, ascending=False)
            .output(load_json=True)
            .first()
        )
        return None, existing
    names = ["org", "tool", "server", "digest", "stamp"] + (["key"] if key_id else [])
    sql = _GRANT_OR_OPEN_SQL % {"key": "= {key}" if key_id else "IS NULL"}
    # Piccolo's raw() takes positional {} placeholders: number the named ones in order of appearance.
    order = [n for n in re.findall(r"\{(\w+)\}", sql)]
    values = dict(zip(names, [org_id, tool, server, digest, now(), key_id], strict=False))
    [found] = await db.fetch(re.sub(r"\{\w+\}", "{}", sql), *[values[n] for n in order])
    if found["_grant_id"] is not None:
        return await _covering_grant(org_id, key_id, tool, server, digest), None
    if found["id"] is None:
        return None, None
    row = flows.decode_json_columns(dict(found))
    row.pop("_grant_id")
    return None, row


async def _covering_grant(
    org_id: uuid.UUID, key_id: Any, tool: str, server: str, digest: str
) -> dict[str, Any] | None:
    condition = (
        (Grant.org == org_id)
        & (Grant.tool == tool)
        & (Grant.server == server)
        & (Grant.arguments_hash == digest)
        & Grant.revoked_at.is_null()
        & (Grant.expires_at > now())
    )
    condition &= Grant.agent_key == key_id if key_id else Grant.agent_key.is_null()
    return await Grant.select().where(condition).order_by(Grant.expires_at, ascending=False).first()


# --- deciding -----------------------------------------------------------------------------------


async def vote(
    hub: Hub,
    principal: Principal,
    request_id: Any,
    decision: str,
    *,
    reason: str | None = None,
    grant_seconds: int = 0,
    channel: str = "api",
    assertion: dict[str, Any] | StepUpProof | None = None,
) -> dict[str, Any]:
    row = await row_in_org(principal.org_id, request_id)
    votes: list[dict[str, Any]] = []
    updated = await flows.record_vote(
        hub, principal, row, decision, reason=reason, grant_seconds=grant_seconds, channel=channel,
        assertion=assertion, seen_votes=votes,
    )
    return await present_one({**updated, "_requester_email": row.get("_requester_email")}, principal, votes=votes)


async def step_up_options(
    hub: Hub, principal: Principal, ids: list[str], decision: str, origin: str
) -> dict[str, Any]:
    """A passkey challenge naming these pending requests, their argument hashes and the decision."""
    if not principal.is_agent and not principal.can_decide:
        raise Forbidden(
            f"{principal.email} is a {principal.role}; only approvers and admins confirm decisions",
            code="role_cannot_vote",
        )
    if not ids or len(ids) > 200:
        raise ValidationFailed("ids must hold 1 to 200 request ids", detail={"field": "ids", "got": len(ids)})
    items: list[tuple[str, str]] = []
    for request_id in dict.fromkeys(ids):
        row = await row_in_org(principal.org_id, request_id)
        if row["status"] != "pending":
            raise Conflict(
                f"request {row['id']} is already {row['status']}",
                code="already_decided",
                detail={"request_id": str(row["id"]), "status": row["status"]},
            )
        items.append((str(row["id"]), row["arguments_hash"]))
    assert hub.redis is not None
    return await passkeys.step_up_options(
        hub.redis.client, principal, items, decision, passkeys.RelyingParty.for_origin(origin)
    )


async def vote_many(
    hub: Hub,
    principal: Principal,
    ids: list[str],
    decision: str,
    *,
    reason: str | None = None,
    grant_seconds: int = 0,
    channel: str = "api",
    assertion: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Each id is its own vote with its own checks; one failure does not stop the others.

    With `assertion`, one passkey step-up confirms them all: it is verified once, and its
    challenge must name every listed request with its arguments hash.
    """
    if not principal.can_decide:
        raise Forbidden(
            f"{principal.email} cannot approve or decline ({principal.role}, via {principal.via})",
            code="role_cannot_vote" if not principal.is_agent else "agent_cannot_vote",
        )
    if not ids or len(ids) > 200:
        raise ValidationFailed("ids must hold 1 to 200 request ids", detail={"field": "ids", "got": len(ids)})
    proof: StepUpProof | None = None
    if assertion is not None:
        rows = [await row_in_org(principal.org_id, rid) for rid in dict.fromkeys(ids)]
        proof = (await flows.confirm_step_up(hub, principal, rows, decision, assertion))[0]
    results: list[dict[str, Any]] = []
    for request_id in dict.fromkeys(ids):
        try:
            item = await vote(
                hub,
                principal,
                request_id,
                decision,
                reason=reason,
                grant_seconds=grant_seconds,
                channel=channel,
                assertion=proof,
            )
        except (Forbidden, NotFound, Conflict, ValidationFailed) as exc:
            results.append({"id": request_id, "ok": False, "error": exc.to_dict()["error"]})
        else:
            results.append({"id": request_id, "ok": True, "status": item["status"], "request": item})
    return results


async def cancel(hub: Hub, principal: Principal, request_id: Any, reason: str | None) -> dict[str, Any]:
    row = await visible_row(principal, request_id)
    if str(row.get("requester") or "") != str(principal.user_id) and not principal.is_admin:
        raise Forbidden("only the requester or an admin can cancel a request", code="not_requester")
    async with unit_of_work():
        current = await flows.load_locked(row["id"])
        assert current is not None
        if current["status"] not in ("pending", "approved"):
            raise Conflict(
                f"this request is already {current['status']}",
                code="already_decided",
                detail={"status": current["status"]},
            )
        by = {"type": principal.actor.type, "id": str(principal.user_id), "email": principal.email}
        outcome = {"kind": "cancelled", "by": [by], "reason": (reason or "").strip() or None}
        updated = await flows.transition(hub, current, "cancelled", principal.actor, Change(outcome=outcome))
        if updated is None:
            raise Conflict("the request changed while cancelling; read it again", code="already_decided")
    return (await present([updated]))[0]


async def claim(hub: Hub, principal: Principal, request_id: Any, hash_hex: str) -> dict[str, Any]:
    """Start executing an approved call, once, with exactly the approved arguments."""
    claimed_by = {"claimed_by": principal.key_name or principal.email}
    fast = await _run_step(hub, principal, request_id, "executing", claimed_by, arguments_hash=hash_hex)
    if fast is not None:
        return await present_one(fast, principal)
    row = await visible_row(principal, request_id)
    _require_runner(principal, row)
    if hash_hex != row["arguments_hash"]:
        raise Conflict(
            "these arguments are not the ones that were approved",
            code="arguments_hash_mismatch",
            detail={"approved": row["arguments_hash"], "got": hash_hex},
        )
    async with unit_of_work():
        _require_claimable(row)
        # The UPDATE is conditional on `approved`, so of racing claims exactly one wins; a row that
        # is still `approved` has not changed since it was read (every change moves its status).
        updated = await flows.transition(
            hub,
            row,
            "executing",
            principal.actor,
            Change(values=claimed_by),
        )
        if updated is None:
            current = await load_row(row["id"])
            assert current is not None
            _require_claimable(current)
            raise Conflict("another call claimed this request first", code="already_claimed")
    return await present_one(updated, principal)


def _require_claimable(row: dict[str, Any]) -> None:
    if row["status"] != "approved":
        code = "already_claimed" if row["status"] in ("executing", "executed", "failed") else "not_approved"
        raise Conflict(
            f"this request is {row['status']}; only an approved request can be claimed",
            code=code,
            detail={"status": row["status"]},
        )


async def report_outcome(
    hub: Hub,
    principal: Principal,
    request_id: Any,
    *,
    success: bool,
    result_summary: str | None,
    error: str | None,
) -> dict[str, Any]:
    values = {
        "success": success,
        "result_summary": (result_summary or "")[:4000] or None,
        "error": (error or "")[:4000] or None,
    }
    fast = await _run_step(hub, principal, request_id, "executed" if success else "failed", values)
    if fast is not None:
        return await present_one(fast, principal)
    row = await visible_row(principal, request_id)
    _require_runner(principal, row)
    if row["status"] != "executing":
        raise Conflict(
            f"this request is {row['status']}; an outcome is reported once, after a claim",
            code="not_executing",
            detail={"status": row["status"]},
        )
    async with unit_of_work():
        updated = await flows.transition(
            hub, row, "executed" if success else "failed", principal.actor, Change(values=values)
        )
        if updated is None:
            raise Conflict("the outcome was already reported", code="not_executing")
    return await present_one(updated, principal)


async def _run_step(
    hub: Hub, principal: Principal, request_id: Any, new: str, values: dict[str, Any], **checks: Any
) -> dict[str, Any] | None:
    """The one-statement claim/report (PostgreSQL, no BEGIN/COMMIT: the statement is its transaction);
    None sends the caller down the checked path, which reads the row and says what is wrong (or, on
    SQLite, does the step itself)."""
    rid = parse_id(request_id)
    if rid is None or is_sqlite():
        return None
    return await flows.run_step(hub, principal, rid, new, values, **checks)


def _require_runner(principal: Principal, row: dict[str, Any]) -> None:
    same_key = principal.key_id is not None and str(principal.key_id) == str(row.get("agent_key") or "")
    if not (same_key or principal.is_admin):
        raise Forbidden(
            "only the agent key that made the request (or an admin) can run it", code="not_requester"
        )
