"""Immutable policy versions per organization: validate, apply, diff, roll back, evaluate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import yaml

from backend.accounts.service import Principal, team_members
from backend.audit.service import Actor, record
from backend.bus import Bus, listen_everywhere
from backend.errors import Conflict, NotFound, ValidationFailed
from backend.policy_store.schemas import MAX_POLICY_CHARS
from backend.policy_store.tables import PolicyVersion
from backend.transactions import after_commit, lock, write_transaction
from policies import AgentInfo, CallContext, Policy, PolicyError, load_policy
from policies.diff import diff_policies

if TYPE_CHECKING:
    from backend.hub import Hub

_CACHE: OrderedDict[tuple[str, str], Policy] = OrderedDict()
_CACHE_SIZE = 64


def policy_topic(org_id: uuid.UUID | str) -> str:
    return f"policy:{org_id}"


def _issue_dict(issue: Any) -> dict[str, Any]:
    if is_dataclass(issue) and not isinstance(issue, type):
        return asdict(issue)
    return {k: getattr(issue, k, None) for k in ("source", "line", "column", "path", "value", "message", "hint")}


def policy_error_response(exc: PolicyError) -> ValidationFailed:
    issues = [_issue_dict(issue) for issue in exc.issues]
    first = issues[0] if issues else {}
    where = f"{first.get('source')}:{first.get('line')}:{first.get('column')}" if first else "policy"
    return ValidationFailed(
        f"the policy is invalid ({len(issues)} problem{'s' if len(issues) != 1 else ''}); first at {where}: "
        f"{first.get('message', '')}",
        detail={"issues": issues},
        code="invalid_policy",
    )


MAX_ALIASES = 64
"""YAML anchors plus aliases a policy may use (reuse is fine; an alias bomb is not)."""
MAX_EXPANDED_NODES = 20_000
"""Nodes the document may expand to once every alias is followed."""
COMPILE_SECONDS = 5.0
"""Time budget for compiling one policy (in a worker thread, never on the event loop)."""


def check_policy_bounds(source: str) -> None:
    """Refuse documents too big to compile safely, before the loader builds anything from them."""
    if len(source) > MAX_POLICY_CHARS:
        raise ValidationFailed(
            f"the policy is {len(source)} characters; the limit is {MAX_POLICY_CHARS}",
            code="policy_too_large",
            detail={"field": "source", "limit": MAX_POLICY_CHARS},
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        aliases = sum(
            1 for event in yaml.parse(source, Loader=loader)
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None)
        )
        if aliases > MAX_ALIASES:
            raise ValidationFailed(
                f"the policy uses {aliases} YAML anchors and aliases; the limit is {MAX_ALIASES}",
                code="too_many_aliases",
                detail={"field": "source", "limit": MAX_ALIASES, "hint": "write repeated parts out"},
            )
        root = yaml.compose(source, Loader=loader) if aliases else None
    except yaml.YAMLError:
        return  # the loader reports syntax errors with their line and column
    if root is not None and _expanded_size(root, {}) > MAX_EXPANDED_NODES:
        raise ValidationFailed(
            f"the policy expands to more than {MAX_EXPANDED_NODES} nodes through its aliases",
            code="too_many_aliases",
            detail={"field": "source", "limit": MAX_EXPANDED_NODES},
        )


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Nodes once aliases are followed; shared nodes are counted per use but computed once."""
    key = id(node)
    if key in seen:
        return seen[key]
    seen[key] = 1  # a recursive alias counts once instead of looping
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    seen[key] = min(total, MAX_EXPANDED_NODES + 1)
    return seen[key]


def _bounded_load(source: str, name: str, team_sizes: dict[str, int]) -> Policy:
    check_policy_bounds(source)
    return load_policy(source, source=name, team_sizes=team_sizes)


async def compile_for_org(org_id: uuid.UUID, source: str, *, name: str = "policy.yaml") -> Policy:
    """Load a document against the org's real team sizes; raise ValidationFailed with every issue.

    Compiling runs in a worker thread with a time budget, so a hostile document cannot stall the hub.
    """
    members = await team_members(org_id)
    sizes = {team: len(emails) for team, emails in members.items()}
    try:
        return await asyncio.wait_for(asyncio.to_thread(_bounded_load, source, name, sizes), COMPILE_SECONDS)
    except PolicyError as exc:
        raise policy_error_response(exc) from exc
    except TimeoutError:
        raise ValidationFailed(
            f"the policy took longer than {COMPILE_SECONDS:g} s to compile",
            code="policy_too_complex",
            detail={"field": "source", "hint": "split long expressions and lists"},
        ) from None


def cached_policy(org_id: uuid.UUID | str, sha256: str, source: str) -> Policy:
    """Compile once per version and process (CEL programs included)."""
    key = (str(org_id), sha256)
    policy = _CACHE.get(key)
    if policy is None:
        return _remember(key, load_policy(source, source=f"active policy {sha256[:12]}"))
    _CACHE.move_to_end(key)
    return policy


def _remember(key: tuple[str, str], policy: Policy) -> Policy:
    """Keep a compiled version, evicting the least recently used past the cache size."""
    _CACHE[key] = policy
    _CACHE.move_to_end(key)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return policy


async def directory_warnings(org_id: uuid.UUID, policy: Policy) -> list[str]:
    """Names the policy uses that this organization does not have: nobody could vote there."""
    from backend.accounts.tables import User

    teams = await team_members(org_id)
    emails = {row["email"] for row in await User.select(User.email).where(User.org == org_id)}
    warnings: list[str] = []
    for approval in policy.approval_policies:
        escalation_users = [u for level in approval.escalation for u in level.users]
        escalation_teams = [t for level in approval.escalation for t in level.teams]
        # Someone named and also in a named team counts once: quorum needs distinct people.
        people = {e for e in approval.approvers if e in emails}
        people.update(member for team in approval.teams for member in teams.get(team, []))
        if approval.quorum > len(people):
            warnings.append(
                f"approval policy {approval.name!r}: quorum {approval.quorum} but only {len(people)} distinct "
                "approver(s) exist before escalation, so requests cannot be approved unless escalation adds people"
            )
        for email in sorted(set(approval.approvers) | set(escalation_users)):
            if email not in emails:
                warnings.append(f"approval policy {approval.name!r}: no user {email} in this organization")
        for team in sorted(set(approval.teams) | set(escalation_teams)):
            if team not in teams:
                warnings.append(f"approval policy {approval.name!r}: no team {team!r} in this organization")
            elif not teams[team]:
                warnings.append(f"approval policy {approval.name!r}: team {team!r} has no members")
    return warnings


def _version_dict(row: dict[str, Any], *, with_source: bool = True) -> dict[str, Any]:
    out = {
        "id": str(row["id"]),
        "version": row["version"],
        "sha256": row["sha256"],
        "message": row["message"],
        "is_active": row["is_active"],
        "created_by": row["created_by_label"],
        "created_at": row["created_at"].isoformat(),
        "rolled_back_from": row["rolled_back_from"],
    }
    if with_source:
        out["source"] = row["source"]
    return out


async def active_row(org_id: uuid.UUID) -> dict[str, Any] | None:
    return (
        await PolicyVersion.select()
        .where(
            (PolicyVersion.org == org_id) & (PolicyVersion.is_active == True)  # noqa: E712
        )
        .first()
    )


async def get_active(org_id: uuid.UUID) -> dict[str, Any]:
    row = await active_row(org_id)
    if row is None:
        raise NotFound("no policy has been applied yet", detail={"hint": "preloop policy apply FILE"})
    return _version_dict(row)


async def active_after(hub: Hub, org_id: uuid.UUID, after: int | None, wait: float) -> dict[str, Any] | None:
    """The active version; with `after` and `wait`, a long-poll for one newer than `after` (None when none
    came within `wait` seconds, capped by PRELOOP_MAX_WAIT_SECONDS, or the hub began stopping)."""
    wait = min(wait, float(hub.settings.approvals.max_wait_seconds))
    if after is None or wait <= 0:
        return await get_active(org_id)
    changed = asyncio.Event()
    unsubscribe = hub.bus.subscribe(policy_topic(org_id), lambda *_: changed.set())
    stop_waiting = hub.at_shutdown(changed.set)  # a stopping hub answers (no newer version when unchanged)
    try:
        row = await active_row(org_id)
        if row is None or row["version"] <= after:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=wait)
            row = await active_row(org_id)
    finally:
        unsubscribe()
        stop_waiting()
    if row is None or row["version"] <= after:
        return None
    return await get_active(org_id)


# The active version's row, per org, for a moment: every held call reads it. Applying or rolling back
# publishes on the org's policy topic after its commit, which clears this in every process; the short
# lifetime bounds what a lost bus message can leave behind.
ACTIVE_CACHE_SECONDS = 1.0
_ACTIVE: dict[str, tuple[float, dict[str, Any]]] = {}
_ACTIVE_GENERATION = 0


def _forget_active(_topic: str = "", _message: dict[str, Any] | None = None) -> None:
    global _ACTIVE_GENERATION
    _ACTIVE_GENERATION += 1  # a read that started before the change does not store what it read
    _ACTIVE.clear()


listen_everywhere("policy:", _forget_active)


async def active_policy(org_id: uuid.UUID) -> tuple[dict[str, Any], Policy] | None:
    clock = time.monotonic()
    cached = _ACTIVE.get(str(org_id))
    if cached is not None and cached[0] > clock:
        row = cached[1]
    else:
        generation = _ACTIVE_GENERATION
        found = await active_row(org_id)
        if found is None:
            return None
        row = found
        if generation == _ACTIVE_GENERATION:
            _ACTIVE[str(org_id)] = (clock + ACTIVE_CACHE_SECONDS, row)
    return row, cached_policy(org_id, row["sha256"], row["source"])


async def apply(
    org_id: uuid.UUID,
    source: str,
    actor: Actor,
    bus: Bus,
    *,
    message: str = "",
    rolled_back_from: int | None = None,
    user_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Validate, then store as the next version and make it active, all or nothing."""
    policy = await compile_for_org(org_id, source)
    # The same hash `policy validate` and the gateway print: of the canonical document, not the bytes.
    sha = policy.version_hash
    async with write_transaction():
        await lock(f"policy:{org_id}")
        last = (
            await PolicyVersion.select(PolicyVersion.version)
            .where(PolicyVersion.org == org_id)
            .order_by(PolicyVersion.version, ascending=False)
            .first()
        )
        version = (last["version"] + 1) if last else 1
        await PolicyVersion.update({PolicyVersion.is_active: False}).where(
            (PolicyVersion.org == org_id) & (PolicyVersion.is_active == True)  # noqa: E712
        )
        row = PolicyVersion(
            org=org_id,
            version=version,
            org_version=f"{org_id}:{version}",
            source=source,
            sha256=sha,
            message=message,
            is_active=True,
            created_by=user_id,
            created_by_label=actor.label,
            created_at=datetime.now(UTC),
            rolled_back_from=rolled_back_from,
        )
        await row.save()
        await record(
            org_id,
            "policy.rolled_back" if rolled_back_from else "policy.applied",
            actor,
            subject_type="policy",
            subject_id=str(row.id),
            data={
                "version": version,
                "sha256": sha,
                "message": message,
                "rolled_back_from": rolled_back_from,
                "tools": len(getattr(policy, "tools", []) or []),
            },
        )

        async def announce() -> None:  # gateways long-polling for a newer version wake only once it is committed
            _remember((str(org_id), sha), policy)
            await bus.publish(policy_topic(org_id), {"version": version, "sha256": sha})

        after_commit(announce)
    saved = await PolicyVersion.select().where(PolicyVersion.id == row.id).first()
    assert saved is not None
    return {**_version_dict(saved, with_source=False), "warnings": await directory_warnings(org_id, policy)}


async def list_versions(
    org_id: uuid.UUID, *, limit: int | None = None, before: int | None = None
) -> list[dict[str, Any]]:
    """Every version, newest first, without sources; a page of `limit` older than version `before`."""
    query = PolicyVersion.select().where(PolicyVersion.org == org_id)
    if before is not None:
        query = query.where(PolicyVersion.version < before)
    query = query.order_by(PolicyVersion.version, ascending=False)
    rows = await (query.limit(limit) if limit is not None else query)
    return [_version_dict(row, with_source=False) for row in rows]


async def get_version(org_id: uuid.UUID, version: int) -> dict[str, Any]:
    row = await PolicyVersion.select().where(PolicyVersion.org_version == f"{org_id}:{version}").first()
    if row is None:
        raise NotFound(f"no policy version {version}", detail={"hint": "GET /api/v1/policies/versions lists them"})
    return _version_dict(row)


async def rollback(
    org_id: uuid.UUID, version: int, actor: Actor, bus: Bus, user_id: uuid.UUID | None
) -> dict[str, Any]:
    target = await get_version(org_id, version)
    if target["is_active"]:
        raise Conflict(f"version {version} is already active", code="already_active")
    return await apply(
        org_id,
        target["source"],
        actor,
        bus,
        message=f"rollback to version {version}",
        rolled_back_from=version,
        user_id=user_id,
    )


async def diff(org_id: uuid.UUID, source: str) -> dict[str, Any]:
    await compile_for_org(org_id, source)
    row = await active_row(org_id)
    old = row["source"] if row else ""
    return {"active_version": row["version"] if row else None, "diff": diff_policies(old, source)}


async def export(org_id: uuid.UUID, fmt: str) -> str:
    row = await active_row(org_id)
    if row is None:
        raise NotFound("no policy has been applied yet", detail={"hint": "preloop policy apply FILE"})
    if fmt == "yaml":
        return str(row["source"])
    if fmt == "json":
        return json.dumps(yaml.safe_load(row["source"]), indent=2, default=str)
    raise ValidationFailed(f"unknown export format {fmt!r}", detail={"hint": "use yaml or json"})


async def evaluate(
    principal: Principal,
    *,
    tool: str,
    server: str,
    args: dict[str, Any],
    agent: dict[str, Any] | None,
    justification: str | None,
    at: datetime | None,
) -> dict[str, Any]:
    found = await active_policy(principal.org_id)
    if found is None:
        raise NotFound("no policy has been applied yet", detail={"hint": "preloop policy apply FILE"})
    row, policy = found
    agent = agent or {}
    context = CallContext(
        tool=tool,
        server=server or None,
        args=args,
        agent=AgentInfo(
            name=str(agent.get("name") or principal.key_name or principal.email),
            id=str(agent.get("id") or principal.key_id or principal.user_id),
            labels=dict(agent.get("labels") or principal.labels),
        ),
        justification=justification,
        now=at or datetime.now(UTC),
    )
    decision = policy.evaluate(context).to_dict()
    return {**decision, "policy_version": row["version"]}


# --- the console's editor and the seed's JSON shapes -------------------------------------------


async def check_source(org_id: uuid.UUID, source: str) -> dict[str, Any]:
    """Everything the editor shows for a draft: issues (line, column), its own `tests:`, warnings, diff."""
    from policies.testing import run_policy_tests

    try:
        policy = await compile_for_org(org_id, source, name="editor")
    except ValidationFailed as exc:
        return {"ok": False, "issues": (exc.detail or {}).get("issues", []), "message": exc.message,
                "tests": [], "warnings": [], "diff": None}
    tests = [
        {"label": result.label, "passed": result.passed, "problems": result.problems,
         "line": result.case.line, "decision": result.decision.action}
        for result in run_policy_tests(policy)
    ]
    row = await active_row(org_id)
    return {
        "ok": all(t["passed"] for t in tests),
        "issues": [],
        "message": "",
        "tests": tests,
        "warnings": await directory_warnings(org_id, policy),
        "diff": diff_policies(row["source"] if row else "", source),
        "active_version": row["version"] if row else None,
    }


async def explain_source(
    principal: Principal, source: str | None, *, tool: str, server: str, args: dict[str, Any],
    agent: dict[str, Any] | None,
) -> dict[str, Any]:
    """`evaluate` against a draft (or the active policy when `source` is empty), with the approvers named."""
    if not source:
        result = await evaluate(principal, tool=tool, server=server, args=args, agent=agent, justification=None,
                                at=None)
        found = await active_policy(principal.org_id)
        policy = found[1] if found else None
    else:
        policy = await compile_for_org(principal.org_id, source, name="editor")
        agent = agent or {}
        context = CallContext(
            tool=tool, server=server or None, args=args,
            agent=AgentInfo(name=str(agent.get("name") or ""), id=str(agent.get("id") or ""),
                            labels=dict(agent.get("labels") or {})),
            now=datetime.now(UTC),
        )
        result = {**policy.evaluate(context).to_dict(), "policy_version": None}
    approval = result.get("approval_policy") or {}
    members = await team_members(principal.org_id) if approval else {}
    team_people = (member for team in approval.get("teams", []) for member in members.get(team, []))
    people = sorted({*approval.get("approvers", []), *team_people})
    return {**result, "approvers": people, "draft": bool(source), "known_policy": policy is not None}


def diff_sources(old: str, new: str) -> str:
    """A unified diff of two stored versions' canonical YAML ("" when they mean the same)."""
    return diff_policies(old, new, old_name="active", new_name="chosen")


def _condition(when: str) -> dict[str, Any]:
    return {"type": "argument" if "args" in when else "expression", "expression": when, "enabled": True}


async def seed_tools(org_id: uuid.UUID) -> list[dict[str, Any]]:
    """The active policy's tools in the seed's shape (one entry per tool entry of the file)."""
    found = await active_policy(org_id)
    if found is None:
        return []
    _, policy = found
    default = policy.default_approval_policy.name if policy.default_approval_policy else None
    out: list[dict[str, Any]] = []
    for entry in policy.tools:
        holding = [rule for rule in entry.rules if rule.action == "require_approval"]
        out.append({
            "tool_name": entry.name,
            "source": entry.server or "external_mcp_server",
            "approval_required": bool(holding),
            "approval_policy_id": (holding[0].approval_policy or default) if holding else None,
            "conditions": [_condition(rule.when) for rule in holding if rule.when],
            "rules": [{"action": rule.action, "when": rule.when, "approval_policy": rule.approval_policy,
                       "description": rule.description} for rule in entry.rules],
        })
    return out


async def seed_approval_policies(org_id: uuid.UUID) -> list[dict[str, Any]]:
    """The active policy's approval policies in the seed's shape; the id is the policy's name."""
    found = await active_policy(org_id)
    if found is None:
        return []
    return [
        {
            "id": approval.name,
            "name": approval.name,
            "description": approval.description,
            "approvers": list(approval.approvers),
            "teams": list(approval.teams),
            "notification_channels": list(approval.channels),
            "timeout_seconds": approval.timeout_seconds,
            "quorum": approval.quorum,
        }
        for approval in found[1].approval_policies
    ]


async def voting_rights(org_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """Email -> the active policy's approval policies that person can vote in, and how
    ("directly", "team sre", "escalation after 600s"); only active people, as the vote check counts them."""
    found = await active_policy(org_id)
    if found is None:
        return {}
    teams = await team_members(org_id)
    rights: dict[str, list[dict[str, Any]]] = {}

    def grant(email: str, approval: Any, via: str) -> None:
        mine = rights.setdefault(email, [])
        existing = next((r for r in mine if r["policy"] == approval.name), None)
        if existing is None:
            mine.append({"policy": approval.name, "quorum": approval.quorum, "via": [via]})
        elif via not in existing["via"]:
            existing["via"].append(via)

    for approval in found[1].approval_policies:
        for email in approval.approvers:
            grant(email, approval, "directly")
        for team in approval.teams:
            for email in teams.get(team, []):
                grant(email, approval, f"team {team}")
        for level in approval.escalation:
            for email in level.users:
                grant(email, approval, f"escalation after {level.after_seconds}s")
            for team in level.teams:
                for email in teams.get(team, []):
                    grant(email, approval, f"escalation after {level.after_seconds}s (team {team})")
    return rights
