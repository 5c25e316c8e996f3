"""The approver's inbox: `status=pending` is what I can vote on; `scope=all` is every pending request."""

from __future__ import annotations

from typing import Any

from tests.helpers import Org, auth
from tests.integration.approvals.support import apply_policy, create, vote

SCHEMA = {
    "type": "object",
    "properties": {"table": {"type": "string"}, "database": {"type": "string", "default": "orders"}},
    "required": ["table"],
}


async def _inbox(client: Any, token: str, scope: str | None = None) -> list[dict[str, Any]]:
    params = {"status": "pending", **({"scope": scope} if scope else {})}
    response = await client.get("/api/v1/approvals", params=params, headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_inbox_lists_what_i_can_vote_on_with_progress_and_my_vote(client: Any, org: Org) -> None:
    await apply_policy(client, org)
    drop = await create(client, org, "drop_table", {"table": "old_users"}, input_schema=SCHEMA)
    restart = await create(client, org, "restart", {"service": "api"})
    alice, bob = org.approver_tokens["alice"], org.approver_tokens["bob"]

    bobs = await _inbox(client, bob)
    assert [item["id"] for item in bobs] == [drop["id"]]  # restart is Alice's alone
    item = bobs[0]
    assert item["can_vote"] is True and item["my_vote"] is None and item["why_not"] is None
    assert item["quorum"] == {"required": 2, "approvals": 0, "declines": 0}
    assert item["arguments"] == {"table": "old_users"}
    assert item["arguments_to_run"] == {"table": "old_users", "database": "orders"}  # the schema's default
    assert item["expires_at"] and item["server"] == ""
    assert item["rule"]["tool"] == "drop_table" and item["rule"]["action"] == "require_approval"

    await vote(client, alice, drop["id"])
    assert [i["id"] for i in await _inbox(client, alice)] == [restart["id"]]  # she has voted on the other
    everything = {i["id"]: i for i in await _inbox(client, alice, "all")}
    assert set(everything) == {drop["id"], restart["id"]}
    voted = everything[drop["id"]]
    assert (voted["can_vote"], voted["my_vote"], voted["why_not"]) == (False, "approve", "you approved")
    assert voted["quorum"]["approvals"] == 1
    assert everything[restart["id"]]["can_vote"] is True

    assert (await _inbox(client, bob))[0]["quorum"]["approvals"] == 1
    # People who may not vote see everything only under scope=all, each item saying why not.
    assert await _inbox(client, org.agent_token) == []
    for other in await _inbox(client, org.agent_token, "all"):
        assert other["can_vote"] is False and other["why_not"]
    carol = {i["id"]: i for i in await _inbox(client, org.approver_tokens["carol"], "all")}
    assert carol[restart["id"]]["why_not"] == "you are not an approver of this request"
    bad = await client.get("/api/v1/approvals", params={"status": "pending", "scope": "some"}, headers=auth(bob))
    assert bad.status_code == 422 and bad.json()["error"]["detail"]["field"] == "scope"


async def test_history_is_unchanged_by_the_inbox(client: Any, org: Org) -> None:
    await apply_policy(client, org)
    drop = await create(client, org, "drop_table", {"table": "t"})
    history = (await client.get("/api/v1/approvals", headers=auth(org.admin_token))).json()
    assert [i["id"] for i in history] == [drop["id"]] and "can_vote" not in history[0]


async def test_an_inbox_looks_up_who_may_vote_once_per_set_of_voters(client: Any, org: Org, monkeypatch: Any) -> None:
    """Pending requests from one approval policy name the same voters: the inbox asks who they are once
    for all of them, not once per request, and each item still says the right thing."""
    from backend.approvals import flows

    await apply_policy(client, org)
    drops = [await create(client, org, "drop_table", {"table": f"t{n}"}) for n in range(6)]
    restarts = [await create(client, org, "restart", {"service": f"s{n}"}) for n in range(3)]
    lookups: list[str] = []
    real = flows.eligible_users

    async def counted(row: dict[str, Any], **kwargs: Any) -> dict[str, str]:
        lookups.append(row["tool"])
        return await real(row, **kwargs)

    monkeypatch.setattr(flows, "eligible_users", counted)
    items = {i["id"]: i for i in await _inbox(client, org.approver_tokens["carol"], "all")}
    assert sorted(lookups) == ["drop_table", "restart"]
    assert all(items[d["id"]]["can_vote"] for d in drops)  # carol is in the team drop_table asks
    assert all(items[r["id"]]["why_not"] == "you are not an approver of this request" for r in restarts)
    lookups.clear()
    assert {i["id"] for i in await _inbox(client, org.approver_tokens["alice"])} == {
        r["id"] for r in [*drops, *restarts]
    }
    assert len(lookups) == 2
