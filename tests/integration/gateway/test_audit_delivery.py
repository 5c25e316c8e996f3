"""Audit records are never lost: the hub answers per record, the gateway's spool delivers, compacts and
dead-letters; 5,000 allowed calls mean exactly 5,000 records, across a hub outage and a restart."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from mcp import Client

from backend.audit.tables import AuditEvent
from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from mcp_gateway.spool import AuditSpool
from tests.conftest import LiveHub
from tests.helpers import Org, auth, free_port, make_org
from tests.interop.conftest import PROBE, PYTHON

CALLS = 5000

POLICY = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
tools:
  - name: show_args
    action: allow
defaults: {{unknown_tools: deny, justification: none}}
"""


def record(event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"tool": "show_args", "decision": "allow", "arguments": {"v": 1}, **extra}
    return body if event_id is None else {"event_id": event_id, **body}


# -- the hub's answer ------------------------------------------------------------------------------


async def test_the_hub_answers_each_record_and_dedupes_on_the_whole_event_id(client: Any, org: Org) -> None:
    long_a = "gw-" + "x" * 120 + "-a"
    long_b = "gw-" + "x" * 120 + "-b"  # same first 80 characters as long_a: still a different record
    batch = [
        record("e-1"),
        record("e-2", arguments={"path": "/tmp/a\x00b"}),
        record("e-1"),
        record("e-3", decision="maybe"),
        record(long_a),
        record(long_b),
        {"tool": "no id"},
        record("e-4", agent={"id": "someone-else", "name": "mallory"}),
    ]
    response = await client.post("/api/v1/audit/calls", json={"records": batch}, headers=auth(org.agent_token))
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "rejected", "duplicate", "rejected", "accepted", "accepted", "rejected",
                        "accepted"]
    assert "NUL" in body["results"][1]["error"] and "arguments.path" in body["results"][1]["error"]
    assert "decision" in body["results"][3]["error"]
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (4, 1, 3)
    again = await client.post("/api/v1/audit/calls", json={"records": [record(long_a), record(long_b)]},
                              headers=auth(org.agent_token))
    assert [r["status"] for r in again.json()["results"]] == ["duplicate", "duplicate"]

    me = (await client.get("/api/v1/me", headers=auth(org.agent_token))).json()["key"]
    events = (await client.get("/api/v1/audit/events", params={"kind": "call.allow"},
                               headers=auth(org.admin_token))).json()
    assert len(events) == 4
    for event in events:
        # The agent is the key that reported the record, never what the body claims.
        assert event["actor_id"] == me["id"]
        assert event["data"]["agent"]["id"] == me["id"] and event["data"]["agent"]["name"] == "ci-bot"
    claimed = [e for e in events if "reported_agent" in e["data"]]
    assert [e["data"]["reported_agent"]["id"] for e in claimed] == ["someone-else"]


async def test_only_agent_keys_may_report_calls(client: Any, org: Org) -> None:
    for token in (org.admin_token, org.approver_tokens["alice"]):
        response = await client.post("/api/v1/audit/calls", json={"records": [record("x-1")]},
                                     headers=auth(token))
        assert response.status_code == 403, response.text
    events = (await client.get("/api/v1/audit/events", params={"kind": "call.allow"},
                               headers=auth(org.admin_token))).json()
    assert events == []


# -- the gateway's spool ---------------------------------------------------------------------------


async def test_the_spool_dead_letters_what_the_hub_rejects_and_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = AuditSpool(tmp_path)
    ids = [spool.append(record()) for _ in range(6)]
    bad = {ids[1], ids[4]}

    async def hub(batch: Any) -> list[str]:
        return ["rejected: contains a NUL" if r["event_id"] in bad else "accepted" for r in batch]

    caplog.set_level(logging.ERROR)
    assert await spool.flush(hub) == 4
    assert spool.pending() == []
    assert sorted(d["record"]["event_id"] for d in spool.dead_letters()) == sorted(bad)
    assert all(d["reason"] == "rejected: contains a NUL" for d in spool.dead_letters())
    assert sum("rejected audit record" in r.getMessage() for r in caplog.records) == 2
    assert spool.path.stat().st_size == 0  # compacted once drained
    spool.close()


async def test_a_hub_refusing_a_whole_batch_costs_only_the_bad_record(tmp_path: Path) -> None:
    from mcp_gateway.errors import ApiRequestError

    spool = AuditSpool(tmp_path)
    ids = [spool.append(record(poison=i == 3)) for i in range(8)]
    delivered: list[str] = []

    async def strict_hub(batch: Any) -> None:
        if any(r.get("poison") for r in batch):
            raise ApiRequestError("400 body rejected", http_status=400, code="validation_failed")
        delivered.extend(r["event_id"] for r in batch)

    assert await spool.flush(strict_hub) == 7
    assert sorted(delivered) == sorted(i for n, i in enumerate(ids) if n != 3)
    assert [d["record"]["event_id"] for d in spool.dead_letters()] == [ids[3]]
    spool.close()


# -- 5,000 calls end to end ------------------------------------------------------------------------


@asynccontextmanager
async def switchable_proxy(target_port: int) -> AsyncIterator[tuple[str, anyio.Event]]:
    """A TCP forwarder to the hub that refuses connections until the yielded event is set."""
    port = free_port()
    up = anyio.Event()

    async def pipe(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            await dst.aclose()

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            upstream = await anyio.connect_tcp("127.0.0.1", target_port)
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(pipe, client, upstream)
                tg.start_soon(pipe, upstream, client)

    async def serve() -> None:
        await up.wait()
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        await listener.serve(handle)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        yield f"http://127.0.0.1:{port}", up
        tg.cancel_scope.cancel()


@asynccontextmanager
async def gateway(api_url: str, org: Org, tmp_path: Path) -> AsyncIterator[Gateway]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = GatewaySettings(api_url=api_url, api_key=org.agent_token, policy_file=policy,
                               data_dir=tmp_path / "gw", startup_timeout=5)
    async with Gateway(settings) as gw:
        yield gw


async def call_many(gw: Gateway, start: int, stop: int) -> None:
    async with Client(gw.server.server) as client:
        for i in range(start, stop):
            result = await client.call_tool("show_args", {"value": f"call-{i}"})
            assert not result.is_error, result


def hub_count(hub: LiveHub, org: Org) -> int:
    query = AuditEvent.count().where((AuditEvent.org_id == str(org.id)) & (AuditEvent.kind == "call.allow"))
    return int(hub.call(query.run()))


async def wait_for_count(hub: LiveHub, org: Org, expected: int) -> None:
    with anyio.fail_after(300):
        while (count := await anyio.to_thread.run_sync(hub_count, hub, org)) < expected:
            await anyio.sleep(0.5)
    assert count == expected


def assert_compacted(data_dir: Path) -> None:
    assert (data_dir / "audit-spool.jsonl").stat().st_size == 0
    assert json.loads((data_dir / "audit-spool.offset").read_text()) == 0
    assert not (data_dir / "audit-dead-letter.jsonl").exists()


@pytest.fixture
def live_org(live_hub: LiveHub) -> Org:
    org: Org = live_hub.call(make_org())
    return org


async def settle(gw: Gateway, hub: LiveHub, org: Org) -> None:
    """Wait until the hub holds every call and the spool has nothing left."""
    await wait_for_count(hub, org, CALLS)
    with anyio.fail_after(30):
        while gw.spool.path.stat().st_size:
            await anyio.sleep(0.2)


@pytest.mark.parametrize("scenario", ["steady", "hub-down-first-half", "restart-in-the-middle"])
async def test_5000_allowed_calls_are_exactly_5000_records(
    live_hub: LiveHub, live_org: Org, tmp_path: Path, scenario: str
) -> None:
    org = live_org
    hub_port = int(live_hub.url.rsplit(":", 1)[1])
    half = CALLS // 2
    async with switchable_proxy(hub_port) as (url, up):
        if scenario != "hub-down-first-half":
            up.set()
        async with gateway(url, org, tmp_path) as gw:
            await call_many(gw, 0, half)
            if scenario == "hub-down-first-half":
                assert len(gw.spool.pending()) == half  # nothing could be delivered
                up.set()
            if scenario != "restart-in-the-middle":
                await call_many(gw, half, CALLS)
                await settle(gw, live_hub, org)
        if scenario == "restart-in-the-middle":
            # The first process stopped with records possibly still spooled: the next one delivers them.
            async with gateway(url, org, tmp_path) as gw:
                await call_many(gw, half, CALLS)
                await settle(gw, live_hub, org)
    assert_compacted(tmp_path / "gw")
    async with httpx.AsyncClient(base_url=live_hub.url, headers=auth(org.admin_token)) as http:
        events: list[dict[str, Any]] = []
        after = 0
        while batch := (await http.get("/api/v1/audit/events",
                                       params={"kind": "call.allow", "after_seq": after, "limit": 1000})).json():
            events += batch
            after = batch[-1]["seq"]
    values = sorted(e["data"]["arguments"]["value"] for e in events)
    assert values == sorted(f"call-{i}" for i in range(CALLS))
