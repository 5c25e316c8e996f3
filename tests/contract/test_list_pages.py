"""Cursor pagination of the other lists that grow: users, keys, policy versions, audit events, grants."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.support import POLICY
from tests.helpers import Org, auth, make_org

# each list and the field that names one of its items
LISTS = [
    ("/api/v1/users", "email"),
    ("/api/v1/keys", "id"),
    ("/api/v1/policies/versions", "version"),
    ("/api/v1/audit/events", "seq"),
    ("/api/v1/grants", "id"),
]
GRANTING = POLICY.replace("timeout: 1h}", "timeout: 1h, max_grant: 600}")


async def _grow(client: Any, org: Org) -> None:
    """Three more users, keys, policy versions and grants than make_org leaves (and their audit events)."""
    for n in range(3):
        user = {"email": f"extra{n}@acme.test", "role": "viewer"}
        assert (await client.post("/api/v1/users", json=user, headers=auth(org.admin_token))).status_code == 201
        key = {"name": f"extra-{n}", "scope": "agent"}
        assert (await client.post("/api/v1/keys", json=key, headers=auth(org.admin_token))).status_code == 201
        source = {"source": GRANTING + f"# revision {n}\n"}
        assert (await client.post("/api/v1/policies", json=source, headers=auth(org.admin_token))).status_code == 201
    for n in range(3):  # each approval with a grant_seconds leaves one grant
        call = {"tool": "deploy", "arguments": {"n": n}}
        held = await client.post("/api/v1/approvals", json=call, headers=auth(org.agent_token))
        assert held.status_code == 201, held.text
        approved = await client.post(f"/api/v1/approvals/{held.json()['id']}/approve", json={"grant_seconds": 600},
                                     headers=auth(org.approver_tokens["alice"]))
        assert approved.status_code == 200, approved.text


async def _walk(client: Any, path: str, headers: dict[str, str], limit: int, field: str) -> tuple[list[Any], int]:
    seen: list[Any] = []
    params: dict[str, Any] = {"limit": limit}
    pages = 0
    while True:
        page = await client.get(path, params=params, headers=headers)
        assert page.status_code == 200, page.text
        assert len(page.json()) <= limit
        seen += [item[field] for item in page.json()]
        pages += 1
        cursor = page.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in page.headers
            return seen, pages
        assert len(page.json()) == limit  # only a full page points further
        link = page.headers["link"]
        assert link.startswith(f"<{path}?") and link.endswith('; rel="next"') and f"cursor={cursor}" in link
        params = {"limit": limit, "cursor": cursor}


@pytest.mark.parametrize(("path", "field"), LISTS)
async def test_pages_walk_each_list_once_in_its_stable_order(client: Any, path: str, field: str) -> None:
    org = await make_org()
    await _grow(client, org)
    admin = auth(org.admin_token)
    everything = [item[field] for item in (await client.get(path, params={"limit": 1000}, headers=admin)).json()]
    assert len(everything) >= 3
    seen, pages = await _walk(client, path, admin, 2, field)
    assert seen == everything and len(set(seen)) == len(seen)
    assert pages == len(everything) // 2 + 1  # a full last page is followed by an empty one
    # A page boundary: the first page's last item is not on the second page, the next one is its first.
    first = await client.get(path, params={"limit": 2}, headers=admin)
    second = await client.get(path, params={"limit": 2, "cursor": first.headers["x-next-cursor"]}, headers=admin)
    assert [item[field] for item in second.json()] == everything[2:4]


async def test_each_list_is_ordered_as_documented(client: Any) -> None:
    """Users by email, keys, versions and grants newest first, audit events by seq: the orders a cursor relies on."""
    org = await make_org()
    await _grow(client, org)
    admin = auth(org.admin_token)

    async def everything(path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await client.get(path, params={"limit": 1000}, headers=admin)).json()
        return items

    emails = [u["email"] for u in await everything("/api/v1/users")]
    assert emails == sorted(emails)
    keys = [(k["created_at"], k["id"]) for k in await everything("/api/v1/keys")]
    assert keys == sorted(keys, reverse=True) and keys[0][0] > keys[-1][0]
    versions = [v["version"] for v in await everything("/api/v1/policies/versions")]
    assert versions == [3, 2, 1]
    seqs = [e["seq"] for e in await everything("/api/v1/audit/events")]
    assert seqs == sorted(seqs) and len(seqs) > 9
    grants = [(g["created_at"], g["id"]) for g in await everything("/api/v1/grants")]
    assert grants == sorted(grants, reverse=True) and len(grants) == 3


async def test_a_new_key_between_pages_is_neither_repeated_nor_shifts_the_rest(client: Any) -> None:
    org = await make_org()
    await _grow(client, org)
    admin = auth(org.admin_token)
    before = [k["id"] for k in (await client.get("/api/v1/keys", headers=admin)).json()]
    first = await client.get("/api/v1/keys", params={"limit": 3}, headers=admin)
    created = await client.post("/api/v1/keys", json={"name": "late", "scope": "agent"}, headers=admin)
    assert created.status_code == 201
    rest, _ = await _walk_from(client, "/api/v1/keys", admin, first.headers["x-next-cursor"])
    assert [k["id"] for k in first.json()] + rest == before


async def _walk_from(client: Any, path: str, headers: dict[str, str], cursor: str) -> tuple[list[Any], int]:
    seen: list[Any] = []
    pages = 0
    while cursor:
        page = await client.get(path, params={"limit": 3, "cursor": cursor}, headers=headers)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()]
        pages += 1
        cursor = page.headers.get("x-next-cursor", "")
    return seen, pages


@pytest.mark.parametrize(("path", "field"), LISTS)
async def test_a_cursor_the_api_did_not_hand_out_is_refused_with_the_error_envelope(
    client: Any, path: str, field: str
) -> None:
    org = await make_org()
    # Not base64, the wrong number of parts, and parts of the wrong kind for this list.
    wrong = {"not-a-cursor", "bm90fGE", "fA"}
    if field in ("version", "seq", "id"):
        wrong.add("bm90LWEtbnVtYmVy")  # "not-a-number"
    for cursor in sorted(wrong):
        response = await client.get(path, params={"cursor": cursor}, headers=auth(org.admin_token))
        assert response.status_code == 422, (cursor, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_failed" and error["detail"]["field"] == "cursor"


async def test_grant_pages_keep_the_active_filter(client: Any) -> None:
    org = await make_org()
    await _grow(client, org)
    admin = auth(org.admin_token)
    newest = (await client.get("/api/v1/grants", headers=admin)).json()[0]
    revoked = await client.post(f"/api/v1/grants/{newest['id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    first = await client.get("/api/v1/grants", params={"active": "true", "limit": 1}, headers=admin)
    assert "active=true" in first.headers["link"]
    rest, _ = await _walk_from(client, "/api/v1/grants?active=true", admin, first.headers["x-next-cursor"])
    active = [g["id"] for g in (await client.get("/api/v1/grants?active=true", headers=admin)).json()]
    assert [g["id"] for g in first.json()] + rest == active and newest["id"] not in active and len(active) == 2
