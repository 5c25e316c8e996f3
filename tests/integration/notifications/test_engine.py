"""The delivery engine: retries with backoff, isolation between channels, the sweep, reminders, webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

import anyio

from backend.approvals import flows
from backend.approvals.tables import ApprovalRequest
from backend.notifications import service
from backend.notifications.tables import ChannelSetting, NotificationDelivery
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, create, vote
from tests.integration.notifications.conftest import worker_running
from tests.integration.notifications.support import POLICY, settled


def verify_preloop_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """The verification snippet from docs/notifications.md, run as the receiver would."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    timestamp, received = int(parts["t"]), parts["v1"]
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received)


SECRET = "whsec-0123456789abcdef"


async def _hook(client: Any, org: Any, url: str) -> None:
    response = await client.put(
        "/api/v1/channels/webhook", json={"url": url, "secret": SECRET}, headers=auth(org.admin_token)
    )
    assert response.status_code == 200, response.text


async def test_webhook_posts_signed_json_and_the_secret_is_never_shown(
    client: Any, org: Any, hub: Any, mailbox: Any, receiver: Any
) -> None:
    await apply_policy(client, org, POLICY)
    await _hook(client, org, receiver.url)
    rid = (await create(client, org, "rotate_keys", {"key": "prod-db"}, justification="leaked"))["id"]
    async with worker_running(hub):
        await settled(rid, 2)
    ((headers, body),) = receiver.calls
    assert verify_preloop_signature(SECRET, headers["preloop-signature"], body)
    assert not verify_preloop_signature("wrong-secret-0123456", headers["preloop-signature"], body)
    assert not verify_preloop_signature(SECRET, headers["preloop-signature"], body + b" ")
    event = json.loads(body)
    assert event["type"] == "approval.requested"
    assert event["recipient"]["email"] == "alice@acme.test"
    assert event["request"]["id" if "id" in event["request"] else "request_id"] == rid
    assert event["request"]["tool"] == "rotate_keys" and event["request"]["risk"] == "critical"
    assert event["request"]["justification"] == "leaked"
    assert headers["preloop-delivery"] == event["request"]["delivery_id"]
    listed = await client.get("/api/v1/channels", headers=auth(org.admin_token))
    hook = next(c for c in listed.json() if c["kind"] == "webhook")
    assert hook == {
        "kind": "webhook",
        "enabled": True,
        "configured": True,
        "source": "organization",
        "settings": {"url": receiver.url},
        "secret_set": True,
    }
    assert SECRET not in listed.text
    stored = await ChannelSetting.select(ChannelSetting.secret).where(ChannelSetting.kind == "webhook").first()
    assert stored is not None and SECRET not in stored["secret"]


async def test_a_failing_channel_retries_with_backoff_then_fails_without_blocking_the_others(
    client: Any, org: Any, hub: Any, mailbox: Any, receiver: Any
) -> None:
    await apply_policy(client, org, POLICY)
    receiver.status = 500
    await _hook(client, org, receiver.url)
    rid = (await create(client, org, "rotate_keys", {"key": "prod-db"}))["id"]
    async with worker_running(hub):
        assert len(await mailbox.wait_for(1)) == 1  # email goes out while the webhook keeps failing
        rows = await settled(rid, 2)
    by_channel = {r["channel"]: r for r in await service.deliveries_for(rid, with_attempts=True)}
    assert by_channel["email"]["status"] == "sent" and by_channel["email"]["attempts"] == 1
    hook = by_channel["webhook"]
    assert hook["status"] == "failed" and hook["attempts"] == 3  # PRELOOP_NOTIFY_MAX_ATTEMPTS=3
    assert [h["status"] for h in hook["history"]] == ["retrying", "retrying", "failed"]
    assert all("HTTP 500" in (h["error"] or "") for h in hook["history"])
    assert len(receiver.calls) == 3
    # The request itself is untouched and can still be decided.
    assert (await vote(client, org.approver_tokens["alice"], rid))["status"] == "approved"
    assert rows


async def test_backoff_doubles_up_to_the_cap(hub: Any) -> None:
    # PRELOOP_NOTIFY_BACKOFF_MS=50, cap 1 s.
    assert [service.backoff(hub, n) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


async def test_the_sweep_requeues_deliveries_whose_jobs_were_lost(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    rid = (await create(client, org, "deploy"))["id"]
    await hub.redis.client.flushdb()  # Redis lost its queue before any worker ran
    await NotificationDelivery.update({NotificationDelivery.created_at: flows.now() - timedelta(minutes=1)}).where(
        NotificationDelivery.request == rid
    )
    async with worker_running(hub):
        await mailbox.wait_for(3)
        await settled(rid, 3)
        await anyio.sleep(1.5)  # another sweep or two: nothing is sent again
    assert sorted(m["To"] for m in mailbox.messages) == ["alice@acme.test", "bob@acme.test", "carol@acme.test"]


async def test_reminder_at_half_the_timeout_goes_once_to_those_who_have_not_voted(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    rid = (await create(client, org, "drop_table", {"table": "t"}))["id"]
    await vote(client, org.approver_tokens["alice"], rid)
    assert await flows.fire_reminder(hub, rid) == 0  # not half-way yet
    stamp = flows.now()
    await ApprovalRequest.update(
        {
            ApprovalRequest.created_at: stamp - timedelta(minutes=40),
            ApprovalRequest.expires_at: stamp + timedelta(minutes=20),
        }
    ).where(ApprovalRequest.id == rid)
    assert await flows.fire_reminder(hub, rid) == 1
    assert await flows.fire_reminder(hub, rid) == 0
    assert await flows.sweep_reminders(hub) == 0
    reminders = [r for r in await service.deliveries_for(rid) if r["event"] == "reminder"]
    assert [(r["email"], r["channel"]) for r in reminders] == [("bob@acme.test", "email")]
    async with worker_running(hub):
        await mailbox.wait_for(3)
        await settled(rid, 3)
    (reminder,) = [m for m in mailbox.messages if m["X-Preloop-Event"] == "reminder"]
    assert reminder["To"] == "bob@acme.test"
    assert reminder["Subject"].startswith("Reminder: drop_table")
    assert "1 of 2" in reminder.get_body(preferencelist=("plain",)).get_content()


async def test_a_lost_reminder_job_is_caught_by_the_sweep(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org, POLICY)
    rid = (await create(client, org, "drop_table", {"table": "t"}))["id"]
    stamp = flows.now()
    await ApprovalRequest.update(
        {
            ApprovalRequest.created_at: stamp - timedelta(minutes=40),
            ApprovalRequest.expires_at: stamp + timedelta(minutes=20),
        }
    ).where(ApprovalRequest.id == rid)
    assert await flows.sweep_reminders(hub) == 2
    assert await flows.sweep_reminders(hub) == 0


async def test_preferences_skip_unwanted_channels_and_quiet_hours_defer_all_but_critical(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    bad = await client.put(
        "/api/v1/me/notifications", json={"timezone": "Mars/Olympus"}, headers=auth(org.approver_tokens["bob"])
    )
    assert bad.status_code == 422 and bad.json()["error"]["detail"]["field"] == "timezone"
    bad = await client.put(
        "/api/v1/me/notifications",
        json={"quiet_hours": {"start": "25:00", "end": "07:00"}},
        headers=auth(org.approver_tokens["bob"]),
    )
    assert bad.status_code == 422 and "HH:MM" in bad.json()["error"]["message"]
    # bob wants no email; alice is in quiet hours right now (in her timezone).
    off = await client.put(
        "/api/v1/me/notifications", json={"channels": ["push"]}, headers=auth(org.approver_tokens["bob"])
    )
    assert off.status_code == 200 and off.json()["channels"] == ["push"]
    zone = "Asia/Tokyo"
    from zoneinfo import ZoneInfo

    local = flows.now().astimezone(ZoneInfo(zone))
    start = (local - timedelta(hours=1)).strftime("%H:%M")
    end = (local + timedelta(hours=2)).strftime("%H:%M")
    quiet = await client.put(
        "/api/v1/me/notifications",
        json={"quiet_hours": {"start": start, "end": end}, "timezone": zone},
        headers=auth(org.approver_tokens["alice"]),
    )
    assert quiet.status_code == 200, quiet.text
    assert (await client.get("/api/v1/me/notifications", headers=auth(org.approver_tokens["alice"]))).json() == {
        "channels": None,
        "quiet_hours": {"start": start, "end": end},
        "timezone": zone,
    }
    routine = (await create(client, org, "deploy"))["id"]  # risk high: quiet hours hold it
    critical = (await create(client, org, "rotate_keys", {"key": "k"}))["id"]  # risk critical: goes now
    async with worker_running(hub):
        await settled(critical, 1)
        await settled(routine, 2)  # carol sent, bob skipped; alice deferred
    rows = {r["email"]: r for r in await service.deliveries_for(routine, with_attempts=True)}
    assert rows["bob@acme.test"]["status"] == "skipped"
    assert "turned email notifications off" in rows["bob@acme.test"]["history"][0]["detail"]
    assert rows["alice@acme.test"]["status"] == "queued"
    assert rows["alice@acme.test"]["history"][0]["status"] == "deferred"
    assert rows["carol@acme.test"]["status"] == "sent"
    assert sorted(m["To"] for m in mailbox.messages) == ["alice@acme.test", "carol@acme.test"]
    assert mailbox.to("alice@acme.test")[0]["X-Preloop-Request"] == critical


async def test_only_admins_configure_channels_and_bad_settings_are_explained(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    approver = await client.get("/api/v1/channels", headers=auth(org.approver_tokens["alice"]))
    assert approver.status_code == 403
    put = await client.put(
        "/api/v1/channels/email", json={"smtp_url": "http://x"}, headers=auth(org.approver_tokens["alice"])
    )
    assert put.status_code == 403
    listed = (await client.get("/api/v1/channels", headers=auth(org.admin_token))).json()
    email = next(c for c in listed if c["kind"] == "email")
    assert email["source"] == "environment" and email["configured"]
    bad = await client.put(
        "/api/v1/channels/email",
        json={"smtp_url": "http://mail.example.com", "from": "a@b.c"},
        headers=auth(org.admin_token),
    )
    assert bad.status_code == 422 and bad.json()["error"]["detail"] == {"field": "smtp_url"}
    unknown = await client.put("/api/v1/channels/sms", json={}, headers=auth(org.admin_token))
    assert unknown.status_code == 404
    good = await client.put(
        "/api/v1/channels/email",
        json={"smtp_url": f"smtp://mailer:s3cret-pass@127.0.0.1:{mailbox.port}", "from": "Ops <ops@acme.test>"},
        headers=auth(org.admin_token),
    )
    assert good.status_code == 200, good.text
    assert good.json()["settings"] == {
        "server": f"smtp://mailer@127.0.0.1:{mailbox.port}",
        "from": "Ops <ops@acme.test>",
    }
    assert "s3cret-pass" not in good.text
    tested = await client.post("/api/v1/channels/email/test", headers=auth(org.admin_token))
    assert tested.status_code == 200, tested.text
    assert tested.json()["ok"] is True and tested.json()["recipient"] == "admin@acme.test"
    (mail,) = await mailbox.wait_for(1)
    assert mail["To"] == "admin@acme.test" and mail["From"] == "Ops <ops@acme.test>"
    assert mailbox.logins == [("mailer", "s3cret-pass")]  # the sealed password, opened for the server only
    hook_test = await client.post("/api/v1/channels/webhook/test", headers=auth(org.admin_token))
    assert hook_test.json()["ok"] is False and "not configured" in hook_test.json()["answer"]
