"""Web Push against a local push service: RFC 8291 payloads, VAPID, Declarative Web Push, 410 cleanup."""

from __future__ import annotations

import json
import time
from typing import Any

from backend.accounts.tables import PushSubscription
from backend.notifications.tables import HubKey
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, create, vote
from tests.integration.notifications.conftest import check_vapid, new_browser, worker_running
from tests.integration.notifications.support import POLICY, settled


async def test_subscriptions_are_validated_and_removed_by_endpoint(client: Any, org: Any, push_service: Any) -> None:
    token = org.approver_tokens["alice"]
    browser = new_browser(push_service.origin)
    bad = await client.post(
        "/api/v1/push/subscriptions",
        json={**browser.to_json(), "keys": {"p256dh": "abc", "auth": browser.to_json()["keys"]["auth"]}},
        headers=auth(token),
    )
    assert bad.status_code == 422 and bad.json()["error"]["detail"] == {"field": "keys.p256dh"}
    made = await client.post("/api/v1/push/subscriptions", json=browser.to_json(), headers=auth(token))
    assert made.status_code == 201, made.text
    again = await client.post("/api/v1/push/subscriptions", json=browser.to_json(), headers=auth(token))
    assert again.status_code == 201 and again.json()["id"] == made.json()["id"]
    assert await PushSubscription.count() == 1
    other = await client.request(
        "DELETE",
        "/api/v1/push/subscriptions",
        json={"endpoint": browser.endpoint},
        headers=auth(org.approver_tokens["bob"]),
    )
    assert other.status_code == 404  # not bob's
    gone = await client.request(
        "DELETE", "/api/v1/push/subscriptions", json={"endpoint": browser.endpoint}, headers=auth(token)
    )
    assert gone.status_code == 204
    assert await PushSubscription.count() == 0


async def test_push_is_encrypted_signed_declarative_and_replaced_by_the_outcome(
    client: Any, org: Any, hub: Any, mailbox: Any, push_service: Any
) -> None:
    await apply_policy(client, org, POLICY)
    first = await client.get("/api/v1/push/vapid-public-key")
    key = first.json()["public_key"]
    assert first.status_code == 200 and len(key) == 87  # 65-byte point, base64url
    assert (await client.get("/api/v1/push/vapid-public-key")).json()["public_key"] == key  # kept
    stored = await HubKey.select().first()
    assert stored is not None and "PRIVATE KEY" not in stored["private"]  # sealed at rest
    phone = new_browser(push_service.origin)
    stale = new_browser(push_service.origin, "gone")
    for browser in (phone, stale):
        response = await client.post(
            "/api/v1/push/subscriptions", json=browser.to_json(), headers=auth(org.approver_tokens["alice"])
        )
        assert response.status_code == 201
    rid = (await create(client, org, "restart", {"service": "api"}, justification="memory leak"))["id"]
    async with worker_running(hub):
        await settled(rid, 4)  # push + email for alice and bob (bob has no device: skipped)
    calls = [c for c in push_service.calls if c[0].startswith("/push/")]
    assert len(calls) == 1
    _, headers, body = calls[0]
    assert headers["urgency"] == "high" and headers["content-encoding"] == "aes128gcm"
    ttl = int(headers["ttl"])
    assert 3500 < ttl <= 3600  # up to the deadline (timeout 1h)
    assert headers["topic"] == rid.replace("-", "")
    check_vapid(headers["authorization"], key, push_service.origin)
    payload = phone.decrypt(body)
    assert len(json.dumps(payload, separators=(",", ":")).encode()) < 3000
    assert payload["web_push"] == 8030
    note = payload["notification"]
    assert note["navigate"] == f"http://hub.test/app/#/requests/{rid}"
    assert note["tag"] == f"preloop-{rid}"
    assert note["title"] == "Approve restart?" and "ci-bot" in note["body"] and "memory leak" in note["body"]
    assert [a["action"] for a in note["actions"]] == ["approve", "decline"]
    assert payload["preloop"]["request_id"] == rid and payload["preloop"]["event"] == "requested"
    # The push service said 410 for the stale browser: that subscription is gone, the phone's stays.
    assert [r["endpoint"] for r in await PushSubscription.select(PushSubscription.endpoint)] == [phone.endpoint]

    await vote(client, org.approver_tokens["bob"], rid, "decline", reason="not during the sale")
    async with worker_running(hub):
        await settled(rid, 7)  # outcome: alice push + email, bob email (his push was skipped)
    _, headers, body = [c for c in push_service.calls if c[0].startswith("/push/")][-1]
    outcome = phone.decrypt(body)
    assert outcome["notification"]["tag"] == f"preloop-{rid}"  # replaces the actionable one
    assert "Declined by bob@acme.test: not during the sale" in outcome["notification"]["body"]
    assert "actions" not in outcome["notification"]
    assert outcome["preloop"]["event"] == "outcome" and outcome["preloop"]["status"] == "declined"
    assert headers["urgency"] == "normal"
    check_vapid(headers["authorization"], key, push_service.origin)
    assert int(time.time()) > 0


async def test_push_test_endpoint_reaches_the_callers_devices(
    client: Any, org: Any, hub: Any, push_service: Any
) -> None:
    browser = new_browser(push_service.origin)
    await client.post("/api/v1/push/subscriptions", json=browser.to_json(), headers=auth(org.admin_token))
    tested = await client.post("/api/v1/channels/push/test", headers=auth(org.admin_token))
    assert tested.status_code == 200 and tested.json()["ok"] is True, tested.text
    ((_, _, body),) = push_service.calls
    assert browser.decrypt(body)["notification"]["title"] == "Preloop test notification (push)"
