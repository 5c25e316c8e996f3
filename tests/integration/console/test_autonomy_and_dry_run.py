"""Gradual autonomy stats and suggestions, and the dry run of a draft over recorded calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from backend.approvals.tables import ApprovalRequest
from backend.policy_store import ruleedit
from tests.helpers import auth, make_org

POLICY = """\
version: "1"
approval_policies:
  - {name: sre, teams: [sre], quorum: 1}
tools:
  # refunds: every one so far was approved
  - name: refund
    rules:
      - {when: "double(args.amount) > 10000.0", action: deny}
      - {action: require_approval, approval_policy: sre, description: refunds}
  - name: drop_table
    action: require_approval
    approval_policy: sre
  - name: restart
    action: require_approval
    approval_policy: sre
  - name: read_logs
    action: allow
defaults:
  unknown_tools: deny
"""


async def _ask(client: Any, org: Any, tool: str, args: dict[str, Any]) -> str:
    answer = await client.post("/api/v1/approvals", json={"tool": tool, "arguments": args},
                               headers=auth(org.agent_token))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def _vote(client: Any, org: Any, request_id: str, decision: str, reason: str | None = None) -> None:
    body = {"reason": reason} if reason else {}
    answer = await client.post(f"/api/v1/approvals/{request_id}/{decision}", json=body,
                               headers=auth(org.approver_tokens["alice"]))
    assert answer.status_code == 200, answer.text


async def _history(client: Any, org: Any) -> None:
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    for amount in (20, 75, 120.5, 40, 99, 60):
        await _vote(client, org, await _ask(client, org, "refund", {"amount": amount}), "approve")
    for n in range(6):
        request_id = await _ask(client, org, "drop_table", {"table": f"t{n}"})
        if n < 4:
            await _vote(client, org, request_id, "decline", "never drop tables" if n < 3 else "wrong table")
        else:
            await _vote(client, org, request_id, "approve")
    for n in range(3):  # too few decisions for any suggestion
        await _vote(client, org, await _ask(client, org, "restart", {"service": f"s{n}"}), "approve")
    old = await _ask(client, org, "refund", {"amount": 5000})  # older than 30 days: not counted
    await ApprovalRequest.update({ApprovalRequest.created_at: datetime.now(UTC) - timedelta(days=31)}).where(
        ApprovalRequest.id == old
    )
    calls = [{"event_id": f"e{n}", "tool": "read_logs", "decision": "allow", "arguments": {"lines": n},
              "rule": {"tool": "read_logs", "index": 0, "action": "allow", "server": None, "when": None}}
             for n in range(4)]
    calls.append({"event_id": "e-hash", "tool": "read_logs", "decision": "allow", "arguments_hash": "ab" * 32})
    reported = await client.post("/api/v1/audit/calls", json={"records": calls}, headers=auth(org.agent_token))
    assert reported.status_code == 200 and reported.json()["accepted"] == len(calls), reported.text


async def test_autonomy_counts_rates_reasons_and_suggests_diffs(client: Any) -> None:
    org = await make_org()
    await _history(client, org)
    answer = await client.get("/api/v1/autonomy", headers=auth(org.admin_token))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    by_tool = {(r["tool"], r["rule_index"]): r for r in report["rules"]}

    refund = by_tool[("refund", 1)]
    assert (refund["requests"], refund["approved"], refund["declined"], refund["approval_rate"]) == (6, 6, 0, 1.0)
    assert refund["median_seconds_to_decision"] is not None and refund["median_seconds_to_decision"] >= 0
    relax = refund["suggestion"]
    assert relax["kind"] == "relax" and "amount <= 120.5" in relax["summary"]
    # narrowed: a new allow rule for the approved range goes before the holding rule
    added = [line for line in relax["diff"].splitlines() if line.startswith("+ ")]
    assert "+  - when: double(args.amount) <= 120.5" in added and "+    action: allow" in added
    rules = next(e for e in ruleedit.view(relax["source"]) if e["name"] == "refund")["rules"]
    assert [r["action"] for r in rules] == ["deny", "allow", "require_approval"]

    drop = by_tool[("drop_table", 0)]
    assert (drop["requests"], drop["declined"], drop["approval_rate"]) == (6, 4, round(2 / 6, 4))
    assert drop["declines"] == [{"reason": "never drop tables", "count": 3}, {"reason": "wrong table", "count": 1}]
    tighten = drop["suggestion"]
    assert tighten["kind"] == "tighten" and "never drop tables" in tighten["diff"]
    assert [r["action"] for r in next(e for e in ruleedit.view(tighten["source"])
                                      if e["name"] == "drop_table")["rules"]] == ["deny"]

    assert by_tool[("restart", 0)]["suggestion"] is None  # 3 decisions < the threshold
    logs = by_tool[("read_logs", 0)]
    assert (logs["calls"], logs["requests"], logs["approval_rate"]) == (4, 0, None)
    assert by_tool[("read_logs", None)]["calls"] == 1  # the record without a rule: decided by the defaults

    refused = await client.get("/api/v1/autonomy", headers=auth(org.agent_token))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "people_only"
    viewer = await client.post("/api/v1/policies/dry-run", json={"source": POLICY}, headers=auth(org.agent_token))
    assert viewer.status_code == 403

    # nothing was applied: the active version is still the first
    versions = (await client.get("/api/v1/policies/versions", headers=auth(org.admin_token))).json()
    assert len(versions) == 1


async def test_dry_run_shows_which_decisions_change(client: Any, monkeypatch: Any) -> None:
    org = await make_org()
    await _history(client, org)
    report = (await client.get("/api/v1/autonomy", headers=auth(org.admin_token))).json()
    relax = next(r for r in report["rules"] if r["tool"] == "refund")["suggestion"]

    answer = await client.post("/api/v1/policies/dry-run", json={"source": relax["source"]},
                               headers=auth(org.admin_token))
    assert answer.status_code == 200, answer.text
    run = answer.json()
    # 6 refunds + 6 drops + 3 restarts + 4 replayable log reads; one record kept only a hash; the old refund is out
    assert (run["replayed"], run["skipped"], run["changed"]) == (19, 1, 6)
    assert run["transitions"] == [{"old": "require_approval", "new": "allow", "count": 6}]
    assert not run["limited"] and not run["truncated"]
    assert {e["tool"] for e in run["examples"]} == {"refund"}
    assert {e["args"]["amount"] for e in run["examples"]} == {20, 75, 120.5, 40, 99, 60}
    assert all(e["new_rule"] == "refund rule 2" for e in run["examples"])

    stricter = POLICY.replace("  - name: read_logs\n    action: allow", "  - name: read_logs\n    action: deny")
    run = (await client.post("/api/v1/policies/dry-run", json={"source": stricter},
                             headers=auth(org.admin_token))).json()
    assert run["transitions"] == [{"old": "allow", "new": "deny", "count": 4}]

    from backend.policy_store import replay

    monkeypatch.setattr(replay, "MAX_RECORDS", 5)  # a busy org: only the newest records of each source
    run = (await client.post("/api/v1/policies/dry-run", json={"source": stricter},
                             headers=auth(org.admin_token))).json()
    assert run["limited"] and run["replayed"] + run["skipped"] == 10

    broken = await client.post("/api/v1/policies/dry-run", json={"source": POLICY.replace("deny}", "denyy}")},
                               headers=auth(org.admin_token))
    assert broken.status_code == 422 and broken.json()["error"]["detail"]["issues"][0]["line"] == 8


def test_rule_moves_keep_every_value() -> None:
    import pytest

    from backend.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="has rules 1 to 2"):
        ruleedit.move_rule(POLICY, 0, 1, 2)
    with pytest.raises(ValidationFailed, match="not valid YAML"):
        ruleedit.move_rule("tools: [", 0, 0, 1)
    moved = ruleedit.move_rule(POLICY, 0, 1, 0)
    assert [r["action"] for r in ruleedit.view(moved)[0]["rules"]] == ["require_approval", "deny"]
    back = ruleedit.move_rule(moved, 0, 0, 1)
    import yaml

    assert yaml.safe_load(back) == yaml.safe_load(POLICY)
    assert ruleedit.has_comments(POLICY) and not ruleedit.has_comments(back)
