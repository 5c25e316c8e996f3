"""Timeouts and escalation: due times in rows, jobs with fixed ids, and the sweep as a backstop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio

from backend.approvals import flows, jobs
from backend.approvals.tables import ApprovalRequest
from backend.notifications.service import deliveries_for
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, audit_kinds, create, vote
from workers.settings import build_worker


async def _backdate(request_id: str, **fields: Any) -> None:
    """Move due times into the past: what the clock would do while nobody was running."""
    past = flows.now() - timedelta(seconds=1)
    values = {getattr(ApprovalRequest, name): past for name, enabled in fields.items() if enabled}
    await ApprovalRequest.update(values).where(ApprovalRequest.id == request_id)


@asynccontextmanager
async def worker_running(hub: Any) -> AsyncIterator[None]:
    worker = build_worker(hub.redis.arq_settings(), hub=hub)
    task = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        # Stop polling, let jobs in flight finish, then close: closing first would cancel them.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await worker.close()


async def _decided(hub: Any, request_id: str) -> asyncio.Event:
    done = asyncio.Event()
    hub.bus.subscribe(flows.approval_topic(request_id), lambda *_: done.set())
    return done


async def test_restarted_worker_fires_a_deadline_that_passed_while_it_was_down_once(
    client: Any, org: Any, hub: Any
) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "ping", {"host": "db"})  # policy `short`: 1 s timeout
    rid = request["id"]
    decided = await _decided(hub, rid)
    # No worker runs while the deadline passes (it was killed); its `expire:<id>` job waits in Redis.
    row = await flows.load_row(rid)
    assert row is not None
    await anyio.sleep(max(0.0, (row["expires_at"] - flows.now()).total_seconds()) + 0.05)
    assert (await flows.load_row(rid))["status"] == "pending"  # type: ignore[index]
    async with worker_running(hub):
        with anyio.fail_after(15):
            await decided.wait()
    fetched = (await client.get(f"/api/v1/approvals/{rid}", headers=auth(org.agent_token))).json()
    assert fetched["status"] == "expired"
    assert fetched["outcome"] == {"kind": "expired", "by": [], "reason": "no decision within 1s"}
    # Firing again (a duplicate job, the sweep) changes nothing.
    assert await jobs.expire_request({"hub": hub}, rid) is False
    assert await jobs.sweep_deadlines({"hub": hub}) == 0
    assert (await audit_kinds(org, rid)).count("approval.expired") == 1
    late = await vote(client, org.approver_tokens["alice"], rid, expect=409)
    assert late["error"]["code"] == "already_decided"


async def test_sweep_catches_a_deadline_whose_job_was_lost(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "deploy"))["id"]
    await hub.jobs.delete(f"arq:job:expire:{rid}")  # the queued job is gone (Redis lost it)
    await _backdate(rid, expires_at=True)
    assert await jobs.sweep_deadlines({"hub": hub}) == 1
    assert (await flows.load_row(rid))["status"] == "expired"  # type: ignore[index]
    assert await jobs.sweep_deadlines({"hub": hub}) == 0
    assert (await audit_kinds(org, rid)).count("approval.expired") == 1


async def test_on_timeout_approve_approves_with_a_machine_readable_reason(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "scale", {"n": 3}))["id"]
    assert await jobs.expire_request({"hub": hub}, rid) is False  # not due yet
    await _backdate(rid, expires_at=True)
    assert await jobs.expire_request({"hub": hub}, rid) is True
    fetched = (await client.get(f"/api/v1/approvals/{rid}", headers=auth(org.agent_token))).json()
    assert fetched["status"] == "approved"
    assert fetched["outcome"]["kind"] == "approved"
    assert "on_timeout: approve" in fetched["outcome"]["reason"]


async def test_escalation_adds_and_notifies_new_approvers_and_keeps_the_first(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "restart", {"svc": "api"})
    rid = request["id"]
    assert request["next_escalation_at"] is not None
    # Before escalation only alice may vote; carol is refused.
    refused = await vote(client, org.approver_tokens["carol"], rid, expect=403)
    assert refused["error"]["code"] == "not_eligible"
    assert [d["email"] for d in await deliveries_for(rid)] == ["alice@acme.test"]
    assert await jobs.escalate_request({"hub": hub}, rid, 1) is False  # not due
    await _backdate(rid, next_escalation_at=True)
    assert await jobs.escalate_request({"hub": hub}, rid, 2) is False  # wrong level id: harmless
    assert await jobs.escalate_request({"hub": hub}, rid, 1) is True
    assert await jobs.escalate_request({"hub": hub}, rid, 1) is False  # a repeat does nothing
    row = await flows.load_row(rid)
    assert row is not None
    assert row["escalation_level"] == 1
    assert row["next_escalation_at"] is not None  # level 2 is scheduled next
    deliveries = await deliveries_for(rid)
    assert sorted((d["email"], d["escalation_level"]) for d in deliveries) == [
        ("alice@acme.test", 0), ("carol@acme.test", 1),
    ]
    # Level 2 (team sre) through the sweep: bob joins; alice (already eligible) is not re-notified.
    await _backdate(rid, next_escalation_at=True)
    assert await jobs.sweep_deadlines({"hub": hub}) == 1
    deliveries = await deliveries_for(rid)
    assert sorted((d["email"], d["escalation_level"]) for d in deliveries) == [
        ("alice@acme.test", 0), ("bob@acme.test", 2), ("carol@acme.test", 1),
    ]
    assert (await audit_kinds(org, rid)).count("approval.escalated") == 2
    # The original approver can still decide.
    approved = await vote(client, org.approver_tokens["alice"], rid)
    assert approved["status"] == "approved"


async def test_notifications_are_announced_on_the_event_stream(client: Any, org: Any, hub: Any) -> None:
    await apply_policy(client, org)
    async with hub.bus.stream(f"events:{org.id}") as queue:
        rid = (await create(client, org, "deploy"))["id"]
        with anyio.fail_after(5):
            seen = [await queue.get(), await queue.get()]
    kinds = {m["type"]: m for m in seen}
    assert set(kinds) == {"notifications.queued", "approval.requested"}
    assert kinds["notifications.queued"]["request_id"] == rid
    assert kinds["notifications.queued"]["deliveries"] == 6
