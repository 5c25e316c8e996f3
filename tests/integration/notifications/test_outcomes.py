"""Outcome messages for every end of a request, escalation by email, quiet hours end to end, the
per-channel recent-deliveries view and the delivery counter."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import REGISTRY

from backend.approvals import flows
from backend.approvals.tables import ApprovalRequest
from backend.notifications import service
from backend.notifications.tables import NotificationDelivery
from policies import arguments_hash
from tests.helpers import auth, make_org
from tests.integration.approvals.support import apply_policy, create, vote
from tests.integration.notifications.conftest import worker_running
from tests.integration.notifications.support import settled

POLICY = """
version: "1"
name: outcome-tests
approval_policies:
  - name: alice-mail
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [email]
  - name: escalating
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [email]
    escalation:
      - {after: 10m, to: [carol@acme.test]}
  - name: alice-hook
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [email, webhook]
tools:
  - {name: deploy, server: infra, action: require_approval, approval_policy: alice-mail, risk: high}
  - {name: rotate_keys, action: require_approval, approval_policy: alice-mail, risk: critical}
  - {name: page, action: require_approval, approval_policy: escalating, risk: high}
  - {name: purge, action: require_approval, approval_policy: alice-hook}
defaults:
  unknown_tools: deny
"""


def counted(channel: str, result: str) -> float:
    value = REGISTRY.get_sample_value("preloop_notification_deliveries_total", {"channel": channel, "result": result})
    return value or 0.0


def text_of(mail: Any) -> str:
    return str(mail.get_body(preferencelist=("plain",)).get_content())


async def _run(client: Any, org: Any, rid: str, success: bool, **extra: Any) -> None:
    row = await flows.load_row(rid)
    assert row is not None
    headers = auth(org.agent_token)
    claimed = await client.post(
        f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": arguments_hash(row["arguments"])}, headers=headers
    )
    assert claimed.status_code == 200, claimed.text
    done = await client.post(f"/api/v1/approvals/{rid}/outcome", json={"success": success, **extra}, headers=headers)
    assert done.status_code == 200, done.text


async def test_expired_cancelled_executed_and_failed_each_tell_everyone_notified_and_count(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    sent_before = counted("email", "sent")
    ids = {name: (await create(client, org, "deploy", {"n": name}))["id"] for name in ("exp", "can", "exe", "fai")}
    async with worker_running(hub):
        await mailbox.wait_for(4)  # the asks went out first
        stamp = flows.now()
        await ApprovalRequest.update({ApprovalRequest.expires_at: stamp - timedelta(seconds=1)}).where(
            ApprovalRequest.id == ids["exp"]
        )
        await flows.fire_expiry(hub, ids["exp"])  # or the worker's own expiry sweep got there first
        expired = await flows.load_row(ids["exp"])
        assert expired is not None and expired["status"] == "expired"
        cancelled = await client.post(
            f"/api/v1/approvals/{ids['can']}/cancel",
            json={"reason": "superseded by v43"},
            headers=auth(org.agent_token),
        )
        assert cancelled.status_code == 200, cancelled.text
        for name in ("exe", "fai"):
            await vote(client, org.approver_tokens["alice"], ids[name])
        await _run(client, org, ids["exe"], True, result_summary="deployed")
        await _run(client, org, ids["fai"], False, error="registry timed out")
        # 4 asks + expired + cancelled + (approved, executed) + (approved, failed)
        await mailbox.wait_for(10)
        for rid in ids.values():
            rows = await settled(rid, 3 if rid in (ids["exe"], ids["fai"]) else 2)
            assert {r["status"] for r in rows} == {"sent"}, rows
    outcomes = {
        (m["X-Preloop-Request"], m["Subject"]): text_of(m)
        for m in mailbox.messages
        if m["X-Preloop-Event"] == "outcome"
    }
    assert all(m["To"] == "alice@acme.test" for m in mailbox.messages)
    expected = {
        (ids["exp"], "deploy on infra: expired"): "Expired: no decision within 3600s",
        (ids["can"], "deploy on infra: cancelled"): "Cancelled: superseded by v43",
        (ids["exe"], "deploy on infra: executed"): "Approved and executed",
        (ids["fai"], "deploy on infra: failed"): "Approved, but the call failed: registry timed out",
    }
    for key, says in expected.items():
        assert key in outcomes, sorted(outcomes)
        assert says in outcomes[key]
        assert "Approve:" not in outcomes[key] and "Decline:" not in outcomes[key]
    events = {(r["request_id"], r["event"]) for r in await _events(list(ids.values()))}
    assert (ids["exp"], "outcome:expired") in events and (ids["can"], "outcome:cancelled") in events
    assert (ids["exe"], "outcome:executed") in events and (ids["fai"], "outcome:failed") in events
    # record_delivery is called once per attempt: ten accepted mails, at least ten counts (the
    # counter is per process; the exact count per attempt is checked on the webhook below).
    assert counted("email", "sent") - sent_before >= 10


async def _events(request_ids: list[str]) -> list[dict[str, Any]]:
    rows = await NotificationDelivery.select(NotificationDelivery.request, NotificationDelivery.event).where(
        NotificationDelivery.request.is_in(request_ids)
    )
    return [{"request_id": str(r["request"]), "event": r["event"]} for r in rows]


async def test_an_escalation_mails_the_new_levels_people_with_deciding_links(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    rid = (await create(client, org, "page", {"who": "db"}))["id"]
    async with worker_running(hub):
        (first,) = await mailbox.wait_for(1)
        assert first["To"] == "alice@acme.test" and first["X-Preloop-Event"] == "requested"
        await ApprovalRequest.update({ApprovalRequest.next_escalation_at: flows.now() - timedelta(seconds=1)}).where(
            ApprovalRequest.id == rid
        )
        await flows.fire_escalation(hub, rid)  # or the worker's own sweep got there first
        await mailbox.wait_for(2)
        await settled(rid, 2)
    (escalated,) = [m for m in mailbox.messages if m["X-Preloop-Event"] != "requested"]
    assert escalated["To"] == "carol@acme.test"  # only the level's new person; alice is not mailed again
    assert escalated["X-Preloop-Event"].startswith("escalated")
    assert escalated["Subject"].startswith("Escalated: approve page")
    body = text_of(escalated)
    assert "Approve: http://hub.test/email/v/" in body and "Decline: http://hub.test/email/v/" in body
    rows = {r["email"]: r for r in await service.deliveries_for(rid)}
    assert rows["carol@acme.test"]["event"] == "escalated:1"
    assert rows["carol@acme.test"]["escalation_level"] == 1


async def test_quiet_hours_hold_a_routine_mail_until_they_end_and_critical_goes_at_once(
    client: Any, org: Any, hub: Any, mailbox: Any
) -> None:
    await apply_policy(client, org, POLICY)
    zone = "America/Sao_Paulo"
    local = flows.now().astimezone(ZoneInfo(zone))
    quiet = {
        "start": (local - timedelta(hours=1)).strftime("%H:%M"),
        "end": (local + timedelta(hours=1)).strftime("%H:%M"),
    }
    alice = auth(org.approver_tokens["alice"])
    saved = await client.put("/api/v1/me/notifications", json={"quiet_hours": quiet, "timezone": zone}, headers=alice)
    assert saved.status_code == 200, saved.text
    deferred_before = counted("email", "deferred")
    routine = (await create(client, org, "deploy", {"env": "prod"}))["id"]
    critical = (await create(client, org, "rotate_keys", {"key": "k"}))["id"]
    async with worker_running(hub):
        (mail,) = await mailbox.wait_for(1)
        assert mail["X-Preloop-Request"] == critical  # critical risk ignores quiet hours
        assert mail["Importance"] == "high"
        await settled(critical, 1)
        for _ in range(100):
            (held,) = await service.deliveries_for(routine, with_attempts=True)
            if held["history"]:
                break
            await anyio_sleep(0.05)
        assert held["status"] == "queued" and [h["status"] for h in held["history"]] == ["deferred"]
        assert "quiet hours until" in held["history"][0]["detail"]
        assert counted("email", "deferred") - deferred_before == 1
        assert len(mailbox.messages) == 1
        # The quiet hours end: alice's clock moves past them (her settings say so now), and the row
        # is due. The sweep hands it a new job; it is sent once.
        ended = await client.put("/api/v1/me/notifications", json={"timezone": zone}, headers=alice)
        assert ended.status_code == 200, ended.text
        await NotificationDelivery.update(
            {
                NotificationDelivery.next_attempt_at: flows.now() - timedelta(minutes=1),
                NotificationDelivery.created_at: flows.now() - timedelta(minutes=2),
            }
        ).where(NotificationDelivery.request == routine)
        await mailbox.wait_for(2)
        await settled(routine, 1)
        await anyio_sleep(1.5)  # another sweep: nothing is sent again
    assert [m["X-Preloop-Request"] for m in mailbox.messages] == [critical, routine]
    (row,) = await service.deliveries_for(routine, with_attempts=True)
    assert row["status"] == "sent" and [h["status"] for h in row["history"]] == ["deferred", "sent"]


async def anyio_sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


async def test_recent_deliveries_per_channel_counts_by_status_and_lists_attempts_with_errors(
    client: Any, org: Any, hub: Any, mailbox: Any, receiver: Any
) -> None:
    await apply_policy(client, org, POLICY)
    receiver.status = 500
    put = await client.put(
        "/api/v1/channels/webhook",
        json={"url": receiver.url, "secret": "whsec-0123456789abcdef"},
        headers=auth(org.admin_token),
    )
    assert put.status_code == 200, put.text
    retrying_before, failed_before = counted("webhook", "retrying"), counted("webhook", "failed")
    rid = (await create(client, org, "purge", {"what": "cache"}))["id"]
    async with worker_running(hub):
        await settled(rid, 2)
    admin = auth(org.admin_token)
    hook = await client.get("/api/v1/channels/webhook/deliveries", headers=admin)
    assert hook.status_code == 200, hook.text
    body = hook.json()
    assert body["kind"] == "webhook" and body["window_hours"] == 24
    assert body["counts"] == {"queued": 0, "sending": 0, "sent": 0, "failed": 1, "skipped": 0}
    assert [a["status"] for a in body["attempts"]] == ["failed", "retrying", "retrying"]  # newest first
    assert [a["number"] for a in body["attempts"]] == [3, 2, 1]
    assert all("HTTP 500" in a["error"] for a in body["attempts"])
    assert {(a["request_id"], a["email"], a["event"]) for a in body["attempts"]} == {
        (rid, "alice@acme.test", "requested")
    }
    assert counted("webhook", "retrying") - retrying_before == 2
    assert counted("webhook", "failed") - failed_before == 1
    mail = (await client.get("/api/v1/channels/email/deliveries?limit=1", headers=admin)).json()
    assert mail["counts"]["sent"] == 1 and len(mail["attempts"]) == 1
    assert mail["attempts"][0]["status"] == "sent" and mail["attempts"][0]["error"] is None
    # Older than the window: not counted, still listed among the last attempts.
    await NotificationDelivery.update({NotificationDelivery.created_at: flows.now() - timedelta(hours=25)}).where(
        NotificationDelivery.request == rid
    )
    old = (await client.get("/api/v1/channels/webhook/deliveries", headers=admin)).json()
    assert old["counts"]["failed"] == 0 and len(old["attempts"]) == 3
    bad = await client.get("/api/v1/channels/webhook/deliveries?limit=0", headers=admin)
    assert bad.status_code == 422 and bad.json()["error"]["detail"] == {"field": "limit"}
    assert "between 1 and 200" in bad.json()["error"]["message"]
    unknown = await client.get("/api/v1/channels/sms/deliveries", headers=admin)
    assert unknown.status_code == 404 and "webhook" in unknown.json()["error"]["message"]
    approver = await client.get("/api/v1/channels/webhook/deliveries", headers=auth(org.approver_tokens["alice"]))
    assert approver.status_code == 403
    other = await make_org("globex")
    theirs = (await client.get("/api/v1/channels/webhook/deliveries", headers=auth(other.admin_token))).json()
    assert theirs["attempts"] == [] and set(theirs["counts"].values()) == {0}


async def test_a_fan_outs_jobs_are_queued_together_as_arq_jobs_and_a_repeat_adds_none(hub: Any) -> None:
    from arq.jobs import Job

    run = uuid.uuid4().hex[:8]  # job keys outlive the queue between tests: fresh ids
    jobs = [(f"delivery-{n}", f"notify:pipeline-{run}-{n}") for n in range(600)]  # more than one batch
    assert await service.enqueue_jobs(hub, jobs) == 600
    assert await service.enqueue_jobs(hub, jobs[:10]) == 0  # same ids: already queued, left alone
    queued = {m.decode() for m in await hub.redis.client.zrange("arq:queue", 0, -1)}
    assert {jid for _, jid in jobs} <= queued
    info = await Job(f"notify:pipeline-{run}-7", hub.jobs).info()
    assert info is not None and info.function == service.JOB and info.args == ("delivery-7",)
    await hub.redis.client.zrem("arq:queue", *[jid for _, jid in jobs])
    await hub.redis.client.delete(*[f"arq:job:{jid}" for _, jid in jobs])
