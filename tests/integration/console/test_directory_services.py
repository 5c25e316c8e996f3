"""The services behind the People, Teams, Channels and keys pages: roles, voting rights, channel status, calls."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backend.accounts import lifecycle
from backend.accounts import service as accounts
from backend.approvals.tables import ApprovalRequest
from backend.audit import calls
from backend.audit.service import Actor
from backend.errors import Conflict, ValidationFailed
from backend.notifications import service as notifications
from backend.notifications.tables import NotificationAttempt, NotificationDelivery
from backend.policy_store import service as policies
from tests.helpers import auth, make_org

ADMIN = Actor("user", "test", "admin@acme.test")
POLICY = """\
version: "1"
approval_policies:
  - name: sre
    teams: [sre]
    approvers: [alice@acme.test]
    quorum: 1
    escalation:
      - {after: 5m, to: [carol@acme.test]}
      - {after: 10m, to: [ops]}
tools:
  - name: drop_table
    rules:
      - {action: require_approval, approval_policy: sre}
"""


async def test_roles_change_and_the_last_admin_stays(client: Any) -> None:
    org = await make_org()
    changed = await lifecycle.set_role(org.id, "Carol@acme.test", "viewer", actor=ADMIN)
    assert changed == {"email": "carol@acme.test", "role": "viewer", "changed": True}
    assert (await lifecycle.set_role(org.id, "carol@acme.test", "viewer", actor=ADMIN))["changed"] is False
    with pytest.raises(ValidationFailed):
        await lifecycle.set_role(org.id, "carol@acme.test", "owner", actor=ADMIN)
    with pytest.raises(Conflict) as refused:
        await lifecycle.set_role(org.id, "admin@acme.test", "approver", actor=ADMIN)
    assert refused.value.code == "last_admin"
    people = {p["email"]: p for p in await lifecycle.list_people(org.id)}
    assert people["carol@acme.test"]["role"] == "viewer" and people["alice@acme.test"]["teams"] == ["sre"]
    assert people["admin@acme.test"]["is_active"] and people["carol@acme.test"]["teams"] == []


async def test_voting_rights_directly_by_team_and_by_escalation(client: Any) -> None:
    org = await make_org()
    assert await policies.voting_rights(org.id) == {}
    await accounts.add_team(org.id, "ops")
    await accounts.add_member(org.id, "ops", "bob@acme.test")
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    rights = await policies.voting_rights(org.id)
    assert rights["alice@acme.test"] == [{"policy": "sre", "quorum": 1, "via": ["directly", "team sre"]}]
    assert rights["bob@acme.test"][0]["via"] == ["team sre", "escalation after 600s (team ops)"]
    assert rights["carol@acme.test"][0]["via"] == ["escalation after 300s"]
    assert "admin@acme.test" not in rights


async def test_channel_status_counts_the_last_day_and_lists_attempts(client: Any) -> None:
    org = await make_org()
    user = await accounts.get_user(org.id, "alice@acme.test")
    now = datetime.now(UTC)
    request = ApprovalRequest(id=uuid.uuid4(), org=org.id, tool="drop_table", status="pending", created_at=now,
                              arguments_hash="0" * 64,
                              expires_at=now + timedelta(hours=1))
    await request.save()
    for n, (status, age) in enumerate((("sent", 1), ("failed", 2), ("failed", 3), ("sent", 30))):
        delivery = NotificationDelivery(
            id=uuid.uuid4(), org=org.id, request=request.id, user=user["id"], channel="email",
            dedupe_key=f"k{n}", status=status, created_at=now - timedelta(hours=age))
        await delivery.save()
        await NotificationAttempt(id=uuid.uuid4(), delivery=delivery.id, number=1, status=status,
                                  error="550 mailbox unavailable" if status == "failed" else None,
                                  started_at=now - timedelta(hours=age)).save()
    status = await notifications.channel_status(org.id, "email")
    assert status["counts"] == {"failed": 2, "sent": 1}  # the 30-hour-old one is outside the day
    assert [a["status"] for a in status["attempts"]] == ["sent", "failed", "failed", "sent"]
    assert status["attempts"][1]["error"] == "550 mailbox unavailable"
    assert status["attempts"][0]["email"] == "alice@acme.test"
    assert (await notifications.channel_status(org.id, "webhook"))["counts"] == {}


async def test_calls_per_day_counts_each_keys_records(client: Any) -> None:
    org = await make_org()
    records = [{"event_id": f"e{n}", "tool": "read", "decision": "allow"} for n in range(4)]
    answer = await client.post("/api/v1/audit/calls", json={"records": records}, headers=auth(org.agent_token))
    assert answer.status_code == 200 and answer.json()["accepted"] == 4, answer.text
    per_day = await calls.calls_per_day(org.id)
    admin = await accounts.get_user(org.id, "admin@acme.test")
    keys = await accounts.list_keys(accounts.Principal(org_id=org.id, user_id=admin["id"], email="admin@acme.test",
                                                       role="admin", via="session"))
    bot = next(k for k in keys if k["name"] == "ci-bot")
    assert per_day == {bot["id"]: {datetime.now(UTC).date().isoformat(): 4}}
