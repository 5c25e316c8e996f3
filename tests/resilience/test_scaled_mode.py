"""Two API processes behind one PostgreSQL + Redis: cross-process wake-ups, a killed API, a flushed
Redis, an unreachable database with a gateway in front (behaviour checks; no timing assertions)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import redis.asyncio as redis_async

from tests.resilience.conftest import Cluster
from tests.resilience.support import audit_events, call_tool, until


async def _create(agent: httpx.AsyncClient, n: int) -> dict[str, Any]:
    response = await agent.post("/api/v1/approvals", json={"tool": "deploy", "arguments": {"n": n}})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _wait(agent: httpx.AsyncClient, rid: str, timeout: int = 60) -> dict[str, Any]:
    response = await agent.get("/api/v1/approvals/wait", params={"ids": rid, "timeout": timeout})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _status(answer: dict[str, Any], rid: str) -> str | None:
    for item in answer.get("decided") or []:
        if item["id"] == rid:
            return str(item["status"])
    return None


async def test_a_decision_through_api_a_wakes_a_call_waiting_through_api_b(cluster: Cluster) -> None:
    a, b = await cluster.api(), await cluster.api()
    async with cluster.client(a, "agent") as agent_a, cluster.client(b, "agent", 90) as agent_b, \
            cluster.client(a, "approver") as alice_a:
        created = await _create(agent_a, 1)
        waiter = asyncio.create_task(_wait(agent_b, created["id"]))
        await asyncio.sleep(1.0)  # parked on B
        assert not waiter.done()
        approved = await alice_a.post(f"/api/v1/approvals/{created['id']}/approve", json={})
        assert approved.status_code == 200, approved.text
        answer = await asyncio.wait_for(waiter, 30)
        assert _status(answer, created["id"]) == "approved"


async def test_kill_9_of_an_api_while_calls_wait_waiters_reconnect_and_nothing_runs_twice(cluster: Cluster) -> None:
    a, b = await cluster.api(), await cluster.api()
    async with cluster.client(a, "agent") as agent_a, cluster.client(b, "agent", 90) as agent_b, \
            cluster.client(a, "approver") as alice_a:
        created = [await _create(agent_a, n) for n in range(5)]

        async def waiting_agent(item: dict[str, Any]) -> str | None:
            """Waits through B; when B dies, reconnects through A (what a client with two hub URLs does)."""
            try:
                return _status(await _wait(agent_b, item["id"]), item["id"])
            except httpx.TransportError:
                return _status(await _wait(agent_a, item["id"]), item["id"])

        waiters = [asyncio.create_task(waiting_agent(item)) for item in created]
        await asyncio.sleep(1.0)
        b.kill9()
        await asyncio.sleep(0.5)
        for item in created:
            answer = await alice_a.post(f"/api/v1/approvals/{item['id']}/approve", json={})
            assert answer.status_code == 200, answer.text
        assert await asyncio.wait_for(asyncio.gather(*waiters), 60) == ["approved"] * 5
        for item in created:  # each approved call runs once: a repeated claim is refused
            first = await agent_a.post(f"/api/v1/approvals/{item['id']}/claim",
                                       json={"arguments_hash": item["arguments_hash"]})
            again = await agent_a.post(f"/api/v1/approvals/{item['id']}/claim",
                                       json={"arguments_hash": item["arguments_hash"]})
            assert first.status_code == 200, first.text
            assert again.status_code == 409 and again.json()["error"]["code"] == "already_claimed"


async def test_redis_flushed_with_100_pending_loses_nothing(cluster: Cluster) -> None:
    a, b = await cluster.api(), await cluster.api()
    async with cluster.client(a, "agent") as agent_a, cluster.client(b, "agent", 120) as agent_b, \
            cluster.client(a, "approver") as alice_a:
        created = [await _create(agent_a, n) for n in range(100)]
        waiters = [asyncio.create_task(_wait(agent_b, item["id"], 90)) for item in created]
        await asyncio.sleep(2.0)
        flusher = redis_async.Redis.from_url(cluster.redis_url)
        try:
            await flusher.flushdb()
        finally:
            await flusher.aclose()
        for item in created:
            answer = await alice_a.post(f"/api/v1/approvals/{item['id']}/approve", json={})
            assert answer.status_code == 200, answer.text
        answers = await asyncio.wait_for(asyncio.gather(*waiters), 120)
        assert [_status(ans, item["id"]) for ans, item in zip(answers, created, strict=True)] == ["approved"] * 100
        left = await alice_a.get("/api/v1/approvals", params={"status": "pending", "scope": "all"})
        assert left.status_code == 200, left.text
        assert [i for i in left.json() if i["id"] in {c["id"] for c in created}] == []


class CuttableProxy:
    """A TCP proxy the test can cut (listener closed, live connections dropped) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_database_unreachable_for_10s_answers_503_with_retry_after_and_recovers(cluster: Cluster) -> None:
    """The API answers 503 + Retry-After; the gateway in front of it fails closed for held tools and keeps
    allowed tools working from its snapshot; both recover without a restart, nothing lost or run twice."""
    from urllib.parse import urlsplit

    parts = urlsplit(cluster.database_url)
    proxy = CuttableProxy(parts.port or 5432)
    await proxy.start()
    proxied = cluster.database_url.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{proxy.port}")
    a = await cluster.api(proxied)
    gateway = await cluster.gateway(a, hold_window=20)
    async with cluster.client(a, "agent") as agent, cluster.client(a, "approver") as alice:
        created = await _create(agent, 1)
        await proxy.cut()
        cut_at = time.monotonic()
        refused = await agent.post("/api/v1/approvals", json={"tool": "deploy", "arguments": {"n": 2}})
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "database_unavailable"
        read = await alice.get(f"/api/v1/approvals/{created['id']}")
        assert read.status_code == 503 and "Retry-After" in read.headers
        ready = await agent.get("/ready")
        assert ready.status_code == 503
        # Through the gateway: allowed tools still run (policy snapshot, records spooled); a held tool
        # does not run, and the agent is told why.
        for n in (10, 11):
            logs = await call_tool(gateway.url, "read_logs", {"n": n})
            assert not logs.get("isError"), logs
        held = await call_tool(gateway.url, "deploy", {"n": 3})
        assert held.get("isError") and held["_meta"]["dev.preloop/status"] == "api_unavailable", held
        assert "NOT run" in held["content"][0]["text"]
        assert cluster.deploy_runs() == []
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
        await proxy.start()  # same port: the API's configured URL works again, no restart
        deadline = time.monotonic() + 30
        while (await agent.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover after the database came back"
            await asyncio.sleep(0.5)
        approved = await alice.post(f"/api/v1/approvals/{created['id']}/approve", json={})
        assert approved.status_code == 200 and approved.json()["status"] == "approved", approved.text
        again = await agent.post("/api/v1/approvals", json={"tool": "deploy", "arguments": {"n": 2}})
        assert again.status_code == 201, again.text

        # The gateway recovered too, unrestarted: the outage's records reach the hub, a held call is asked
        # for and runs once approved.
        async def outage_records() -> list[Any]:
            found = [e["data"]["arguments"]["n"] for e in await audit_events(cluster, "call.allow")]
            return sorted(found) if len(found) >= 2 else []

        assert await until(outage_records, 40, "the records spooled during the outage") == [10, 11]
        waiting = asyncio.create_task(call_tool(gateway.url, "deploy", {"n": 3}))

        async def asked() -> list[dict[str, Any]]:
            return [e for e in await audit_events(cluster, "approval.requested") if e["data"]["server"] == "ops"]

        [request] = await until(asked, 20, "the held call's request")
        answer = await alice.post(f"/api/v1/approvals/{request['subject_id']}/approve", json={})
        assert answer.status_code == 200, answer.text
        result = await asyncio.wait_for(waiting, 30)
        assert not result.get("isError"), result
        assert cluster.deploy_runs() == [{"n": 3}]
    await proxy.cut()
