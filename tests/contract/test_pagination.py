"""Cursor pagination of GET /api/v1/approvals: pages by X-Next-Cursor never repeat or skip an item."""

from __future__ import annotations

from typing import Any

from tests.contract.support import POLICY
from tests.helpers import auth, make_org


async def _request(client: Any, token: str, ref: int) -> str:
    call = {"tool": "deploy", "server": "infra", "arguments": {"ref": ref}}
    response = await client.post("/api/v1/approvals", json=call, headers=auth(token))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_cursor_pages_walk_the_history_once_while_requests_arrive(client: Any) -> None:
    org = await make_org()
    applied = await client.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    for ref in range(5):
        await _request(client, org.agent_token, ref)
    admin = auth(org.admin_token)
    everything = (await client.get("/api/v1/approvals", headers=admin)).json()
    assert len(everything) == 5

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2, "tool": "deploy"}
    pages = 0
    while True:
        page = await client.get("/api/v1/approvals", params=params, headers=admin)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()]
        pages += 1
        if pages == 1:  # a request arriving between pages is not seen twice and shifts nothing
            await _request(client, org.agent_token, 99)
        cursor = page.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in page.headers
            break
        assert page.headers["link"].endswith('; rel="next"') and f"cursor={cursor}" in page.headers["link"]
        params = {"limit": 2, "tool": "deploy", "cursor": cursor}
    assert seen == [item["id"] for item in everything]
    assert pages == 3

    # The old parameters still work as before.
    second = await client.get("/api/v1/approvals", params={"limit": 2, "offset": 3}, headers=admin)
    assert [item["id"] for item in second.json()] == [item["id"] for item in everything[2:4]]


async def test_a_cursor_the_api_did_not_hand_out_is_refused(client: Any) -> None:
    org = await make_org()
    for cursor in ("not-a-cursor", "bm90fGE"):
        response = await client.get("/api/v1/approvals", params={"cursor": cursor}, headers=auth(org.admin_token))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["detail"]["field"] == "cursor"
