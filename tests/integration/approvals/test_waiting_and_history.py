"""Push-based waiting (long-poll and SSE) and the history API."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx

from backend.approvals.flows import approval_topic
from tests.helpers import auth
from tests.integration.approvals.support import api_process, apply_policy, create, vote


async def test_long_poll_returns_when_any_listed_request_is_decided(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    first = (await create(client, org, "deploy", {"n": 1}))["id"]
    second = (await create(client, org, "deploy", {"n": 2}))["id"]
    bus = client.hub.bus
    parked = asyncio.Event()
    subscribe = bus.subscribe

    def watching_subscribe(topic: str, listener: Any) -> Any:
        if topic == approval_topic(second):
            parked.set()
        return subscribe(topic, listener)

    bus.subscribe = watching_subscribe
    waiting = asyncio.create_task(
        client.get("/api/v1/approvals/wait", params={"ids": f"{first},{second}", "timeout": 30},
                   headers=auth(org.agent_token))
    )
    with anyio.fail_after(5):
        await parked.wait()  # the waiter is subscribed on the bus
    bus.subscribe = subscribe
    with anyio.fail_after(5):  # far below the 30 s timeout: the decision woke it
        await vote(client, org.approver_tokens["alice"], second, "decline", reason="no")
        response = await waiting
    body = response.json()
    assert [r["id"] for r in body["decided"]] == [second]
    assert body["decided"][0]["outcome"]["kind"] == "declined"
    assert body["pending"] == [first]
    assert approval_topic(second) not in client.hub.bus._listeners  # nothing left subscribed


async def test_long_poll_answers_at_once_for_decided_and_times_out_for_pending(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    rid = (await create(client, org, "deploy"))["id"]
    headers = auth(org.agent_token)
    timed_out = await client.get("/api/v1/approvals/wait", params={"ids": rid, "timeout": 0}, headers=headers)
    assert timed_out.json() == {"decided": [], "pending": [rid], "unknown": []}
    await vote(client, org.approver_tokens["alice"], rid)
    missing = "00000000-0000-0000-0000-000000000001"
    with anyio.fail_after(5):
        done = await client.post("/api/v1/approvals/wait", json={"ids": [rid, missing], "timeout": 30},
                                 headers=headers)
    assert done.json()["decided"][0]["status"] == "approved"
    assert done.json()["unknown"] == [missing]
    none = await client.get("/api/v1/approvals/wait", params={"ids": missing}, headers=headers)
    assert none.status_code == 404
    bad = await client.get("/api/v1/approvals/wait", params={"ids": "nope"}, headers=headers)
    assert bad.status_code == 422


async def test_decisions_wake_waiters_in_another_process_through_redis(client: Any, org: Any, settings: Any) -> None:
    """The long-poll and SSE run in another API process; the vote lands through this one."""
    await apply_policy(client, org)
    rid = (await create(client, org, "deploy"))["id"]
    async with api_process(settings) as url, \
            httpx.AsyncClient(base_url=url, headers=auth(org.agent_token), timeout=40) as remote:
        waiting = asyncio.create_task(remote.get("/api/v1/approvals/wait", params={"ids": rid, "timeout": 30}))
        events: list[dict[str, Any]] = []

        async def read_sse(ready: anyio.Event) -> None:
            async with remote.stream("GET", "/api/v1/events", params={"limit": 1},
                                     headers=auth(org.admin_token)) as stream:  # events are for people
                event = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event == "ready":
                        ready.set()
                    elif line.startswith("data:"):
                        events.append(json.loads(line.split(":", 1)[1]))

        with anyio.fail_after(15):
            ready = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_sse, ready)
                await ready.wait()
                # Make sure the remote long-poll is parked before deciding (it answers "pending" at 0 s).
                probe = await remote.get("/api/v1/approvals/wait", params={"ids": rid, "timeout": 0})
                assert probe.json()["pending"] == [rid]
                await vote(client, org.approver_tokens["bob"], rid)
                response = await waiting
        assert response.json()["decided"][0]["status"] == "approved"
        assert [e["type"] for e in events] == ["approval.approved"]
        assert events[0]["request_id"] == rid


async def test_history_filters_and_streamed_exports(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    a = (await create(client, org, "deploy", {"n": 1}))["id"]
    b = (await create(client, org, "restart", {"svc": "api"}))["id"]
    c = (await create(client, org, "deploy", {"n": 2}))["id"]
    await vote(client, org.approver_tokens["bob"], a)
    await vote(client, org.approver_tokens["alice"], b, "decline", reason="too risky")
    headers = auth(org.admin_token)

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/api/v1/approvals", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return sorted(r["id"] for r in response.json())

    assert await ids() == sorted([a, b, c])
    assert await ids(tool="deploy") == sorted([a, c])
    assert await ids(tool="rest*") == [b]
    assert await ids(status="pending") == []  # the admin is no approver of c: their inbox is empty
    assert await ids(status="pending", scope="all") == [c]
    assert await ids(status="pending", scope="all", tool="restart") == []  # filters apply to the inbox too
    assert await ids(status="approved,declined") == sorted([a, b])
    assert await ids(approver="alice@acme.test") == [b]
    assert await ids(approver="carol@acme.test") == []
    today = datetime.now(UTC).date()
    assert await ids(start_date=today.isoformat(), end_date=today.isoformat()) == sorted([a, b, c])
    assert await ids(end_date=(today - timedelta(days=1)).isoformat()) == []
    bad = await client.get("/api/v1/approvals", params={"start_date": "yesterday"}, headers=headers)
    assert bad.status_code == 422
    bad_status = await client.get("/api/v1/approvals", params={"status": "maybe"}, headers=headers)
    assert bad_status.status_code == 422

    as_json = await client.get("/api/v1/approvals/export", params={"format": "json"}, headers=headers)
    assert as_json.status_code == 200
    records = {r["id"]: r for r in as_json.json()}
    assert set(records) == {a, b, c}
    assert records[b]["declined_by"] == ["alice@acme.test"]
    assert records[b]["reason"] == "too risky"
    assert records[b]["requested_by"] == "dev@acme.test"
    assert records[a]["approved_by"] == ["bob@acme.test"]
    assert records[a]["arguments"] == {"n": 1}
    as_csv = await client.get("/api/v1/approvals/export", params={"format": "csv", "tool": "deploy"},
                              headers=headers)
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert sorted(r["id"] for r in rows) == sorted([a, c])
    assert json.loads(next(r for r in rows if r["id"] == a)["approved_by"]) == ["bob@acme.test"]
    wrong = await client.get("/api/v1/approvals/export", params={"format": "xml"}, headers=headers)
    assert wrong.status_code == 422
