"""GET /metrics: HTTP, decision, pending, time-to-decision, delivery and deadline-lag metrics move with the work."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from backend.approvals import flows
from backend.approvals.tables import ApprovalRequest
from backend.observability.metrics import record_delivery
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, create, vote
from tests.integration.observability.support import sample


async def scrape(client: Any) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return str(response.text)


async def test_create_and_approve_move_the_counters(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    before = await scrape(client)
    request = await create(client, org, "deploy")
    during = await scrape(client)
    assert sample(during, "preloop_pending_requests") == 1
    await vote(client, org.approver_tokens["alice"], request["id"], "approve")
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("preloop_decisions_total", outcome="approved") == 1
    assert moved("preloop_decisions_total", outcome="declined") == 0
    assert moved("preloop_time_to_decision_seconds_count", outcome="approved") == 1
    assert sample(after, "preloop_pending_requests") == 0
    # Requests are counted by route template, not by concrete path (ids would explode the label set).
    assert moved("preloop_http_requests_total", method="POST", route="/api/v1/approvals", status="201") == 1
    vote_routes = [line for line in after.splitlines()
                   if line.startswith("preloop_http_requests_total{") and "/approve" in line]
    assert vote_routes and all(request["id"] not in line for line in vote_routes), vote_routes
    assert moved("preloop_http_requests_total", method="GET", route="/metrics", status="200") == 2
    # Unrouted paths share one label instead of one series each.
    await client.get("/no/such/page")
    assert sample(await scrape(client), "preloop_http_requests_total",
                  method="GET", route="unmatched", status="404") >= 1


async def test_a_vote_that_loses_is_not_counted_as_a_decision(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "deploy")
    await vote(client, org.approver_tokens["alice"], request["id"], "approve")
    before = await scrape(client)
    await vote(client, org.approver_tokens["bob"], request["id"], "decline", expect=409, reason="too late")
    after = await scrape(client)
    for outcome in ("approved", "declined"):
        assert sample(after, "preloop_decisions_total", outcome=outcome) == sample(
            before, "preloop_decisions_total", outcome=outcome
        )


async def test_deadline_lag_is_the_firing_time_minus_the_due_time(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    request = await create(client, org, "ping")
    due = flows.now() - timedelta(seconds=30)  # as if the worker had been down for half a minute
    await ApprovalRequest.update({ApprovalRequest.expires_at: due}).where(ApprovalRequest.id == request["id"])
    before = await scrape(client)
    assert await flows.fire_expiry(client.hub, request["id"])
    assert not await flows.fire_expiry(client.hub, request["id"])  # a second firing changes nothing
    after = await scrape(client)
    assert sample(after, "preloop_deadline_lag_seconds_count", kind="expiry") - sample(
        before, "preloop_deadline_lag_seconds_count", kind="expiry") == 1
    lag = sample(after, "preloop_deadline_lag_seconds_sum", kind="expiry") - sample(
        before, "preloop_deadline_lag_seconds_sum", kind="expiry")
    assert 30 <= lag < 300
    assert sample(after, "preloop_decisions_total", outcome="expired") - sample(
        before, "preloop_decisions_total", outcome="expired") == 1


async def test_deliveries_recorded_by_channels_show_up(client: Any) -> None:
    before = await scrape(client)
    record_delivery("email", "sent")
    record_delivery("email", "failed")
    record_delivery("email", "sent")
    after = await scrape(client)
    assert sample(after, "preloop_notification_deliveries_total", channel="email", result="sent") - sample(
        before, "preloop_notification_deliveries_total", channel="email", result="sent") == 2
    assert sample(after, "preloop_notification_deliveries_total", channel="email", result="failed") - sample(
        before, "preloop_notification_deliveries_total", channel="email", result="failed") == 1


async def test_metrics_token_guards_the_endpoint_when_set(client: Any) -> None:
    import dataclasses

    hub = client.hub
    original = hub.settings
    hub.settings = dataclasses.replace(
        original, observability=dataclasses.replace(original.observability, metrics_token="s3cret-scrape")
    )
    try:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=auth("wrong"))).status_code == 401
        assert (await client.get("/metrics", headers=auth("s3cret-scrape"))).status_code == 200
    finally:
        hub.settings = original
