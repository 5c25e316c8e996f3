"""The gateway's GET /metrics (calls by decision, latency) and its request ids reaching the hub's log lines."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from mcp import Client

from backend.observability.request_ids import RequestIdFilter
from tests.conftest import LiveHub
from tests.helpers import Org
from tests.integration.gateway import test_held_calls as held_calls
from tests.integration.gateway.test_held_calls import call_while_deciding, decide, gateway
from tests.integration.observability.support import sample

org = held_calls.org  # the same fixture: a fresh org with the held-calls policy applied


async def test_gateway_metrics_and_request_ids(live_hub: LiveHub, org: Org, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="preloop.access")
    caplog.handler.addFilter(RequestIdFilter())
    async with gateway(live_hub, org, tmp_path) as gw, Client(gw.server.server) as client:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.http_app()), base_url="http://127.0.0.1")
        async with http:
            before = (await http.get("/metrics")).text
            assert not (await client.call_tool("show_args", {"value": "plain"})).is_error
            assert (await client.call_tool("show_args", {"value": "forbidden"})).is_error

            async def approve(approval_id: str) -> None:
                assert (await decide(live_hub, org.approver_tokens["alice"], approval_id, "approve")).status_code == 200

            result, approval_id = await call_while_deciding(client, "show_args", {"value": "held-1"}, live_hub, org,
                                                            approve)
            assert not result.is_error
            status = await client.call_tool("preloop_approval_status", {"approval_id": approval_id})
            assert not status.is_error
            response = await http.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        after = response.text
    for decision in ("allow", "deny", "approved", "status"):
        assert sample(after, "preloop_gateway_calls_total", decision=decision) - sample(
            before, "preloop_gateway_calls_total", decision=decision) == 1, decision
        assert sample(after, "preloop_gateway_call_duration_seconds_count", decision=decision) - sample(
            before, "preloop_gateway_call_duration_seconds_count", decision=decision) == 1, decision
    # The hub's metrics are not mixed into the gateway's (they share a process when embedded).
    assert "preloop_http_requests_total" not in after

    # The held call's create and claim reached the hub with the gateway's id for that call.
    ids = {
        record.getMessage().split()[1]: record.request_id  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == "preloop.access" and record.getMessage().startswith("POST ")
    }
    this_call = {"/api/v1/approvals", f"/api/v1/approvals/{approval_id}/claim",
                 f"/api/v1/approvals/{approval_id}/outcome"}
    assert ids["/api/v1/approvals"] == ids[f"/api/v1/approvals/{approval_id}/claim"]
    assert ids["/api/v1/approvals"] not in [rid for path, rid in ids.items() if path not in this_call]
