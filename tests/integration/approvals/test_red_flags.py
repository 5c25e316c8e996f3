"""Red flags computed from the hub's history, as data on GET /api/v1/approvals/{id}."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from backend.accounts import service as accounts
from backend.approvals.tables import ApprovalRequest
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, create, vote


async def _flags(client: Any, org: Any, request_id: str) -> dict[str, str]:
    response = await client.get(f"/api/v1/approvals/{request_id}", headers=auth(org.approver_tokens["alice"]))
    assert response.status_code == 200, response.text
    return {f["code"]: f["why"] for f in response.json()["red_flags"]}


async def test_red_flags_from_history(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    first = (await create(client, org, "deploy", {"env": "staging", "replicas": 3}))["id"]
    flags = await _flags(client, org, first)
    assert set(flags) == {"first_call"}
    assert flags["first_call"] == "ci-bot has never called deploy before"

    history = [first]
    for build, n in enumerate((4, 3, 5, 4, 3, 4, 5, 3)):
        arguments = {"env": "staging", "replicas": n, "build": f"b{build}"}
        history.append((await create(client, org, "deploy", arguments))["id"])
    for declined in history[:2]:
        await vote(client, org.approver_tokens["alice"], declined, "decline", reason="not now")
    pending_prod = (await create(client, org, "deploy", {"env": "prod", "replicas": 4}))["id"]
    history.append(pending_prod)
    # Move the history to yesterday, twelve hours away from now on the clock.
    stamp = datetime.now(UTC)
    earlier = stamp - timedelta(days=1) + timedelta(hours=12)
    await ApprovalRequest.update({ApprovalRequest.created_at: earlier}).where(ApprovalRequest.id.is_in(history))

    risky = (await create(client, org, "deploy", {"env": "prod", "replicas": 400}))["id"]
    flags = await _flags(client, org, risky)
    assert set(flags) == {"unusual_hour", "numeric_outlier", "duplicate_pending", "production", "recent_declines"}
    assert flags["numeric_outlier"].startswith("replicas=400 is far above its usual value for deploy (median 4")
    assert "env=prod" in flags["duplicate_pending"]
    assert flags["production"].startswith("the arguments name production: env='prod'")
    assert flags["recent_declines"] == "2 of ci-bot's requests were declined in the last 7 days"
    assert f"{earlier:%H}:00" in flags["unusual_hour"]

    # Another agent calling the same tool for the first time; nothing else about it stands out.
    dev = await accounts.get_user(org.id, "dev@acme.test")
    token, _ = await accounts.create_key(org.id, dev["id"], "new-bot", scope="agent")
    fresh = (await create(client, org, "deploy", {"env": "staging", "replicas": 4}, token=token))["id"]
    flags = await _flags(client, org, fresh)
    assert "first_call" in flags and "recent_declines" not in flags and "numeric_outlier" not in flags
    assert flags["first_call"] == "new-bot has never called deploy before"
    # The lighter outcome view leaves them out.
    outcome = await client.get(f"/api/v1/approvals/{risky}/outcome", headers=auth(org.admin_token))
    assert "red_flags" not in outcome.json()


async def test_an_inbox_page_reads_a_tools_history_once_and_flags_each_item_as_alone(
    client: Any, org: Any, monkeypatch: Any
) -> None:
    """`red_flags_of` (an inbox page) gives each request the flags `red_flags` gives it alone, reading the
    tool's earlier calls once for the page; where that read stops short of an older item's window (small
    limits here), that item reads its own."""
    from backend.approvals import redflags

    await apply_policy(client, org)
    ids = [(await create(client, org, "deploy", {"env": "staging", "replicas": 3 + n % 3, "n": n}))["id"]
           for n in range(14)]
    ids += [(await create(client, org, "deploy", {"env": "prod", "replicas": 40 * n}))["id"] for n in range(1, 5)]
    ids.append((await create(client, org, "restart", {"service": "api"}))["id"])
    stamp = datetime.now(UTC)
    for n, rid in enumerate(ids):  # an hour apart, the oldest first; restart is the newest
        await ApprovalRequest.update({ApprovalRequest.created_at: stamp - timedelta(hours=len(ids) - n)}).where(
            ApprovalRequest.id == rid
        )
    for old in ids[:12]:
        await vote(client, org.approver_tokens["alice"], old, "approve")
    rows = await ApprovalRequest.select().where(ApprovalRequest.status == "pending").order_by(
        ApprovalRequest.created_at, ascending=False
    ).output(load_json=True)
    assert len(rows) == 7

    reads = 0
    recent = redflags._recent

    async def counted(*args: Any) -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return await recent(*args)

    monkeypatch.setattr(redflags, "_recent", counted)
    alone = [await redflags.red_flags(row) for row in rows]
    reads = 0
    assert await redflags.red_flags_of(rows) == alone
    assert reads == 2  # one per tool on the page
    codes = {flag["code"] for flags in alone for flag in flags}
    assert {"numeric_outlier", "duplicate_pending", "production"} <= codes

    def facts(history: Any) -> tuple[Any, ...]:
        pending = sorted(p["arguments_hash"] for p in history.pending_same_tool)
        return (history.tool_hours, history.tool_arguments, pending, history.earlier_by_agent,
                history.calls_reported_by_agent, history.agent_declines)

    monkeypatch.setattr(redflags, "RECENT_LIMIT", 4)
    monkeypatch.setattr(redflags, "_SHARED_EXTRA", 2)
    single = [facts((await redflags.load_histories([row]))[0]) for row in rows]
    reads = 0
    assert [facts(h) for h in await redflags.load_histories(rows)] == single
    assert reads > 2  # the older items' windows reached past the shared read
    assert all(len(s[0]) <= 4 for s in single) and any(len(s[0]) == 4 for s in single)
