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
