"""Approval lifecycle benchmark on PostgreSQL + Redis.

(a) verdict latency: approve call returns -> a parked long-poll client returns, p50/p99 over
    --requests requests, beside a baseline waiter that polls the database every 2 s (how
    Preloop's open-source release waits), measured in the same run on --baseline requests;
(b) --pending requests pending at once, each with its own long-poll attached: RSS of the API
    process and verdict p99 while they all resolve;
(c) create + decide throughput per second.

The hub runs as `preloop serve --no-worker` in a subprocess (the "API process") on a scratch
database this script creates and drops. Run: `.venv/bin/python bench/approvals.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("PRELOOP_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PRELOOP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def url_for_database(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """`admin_url` naming database `name` instead (user, host, port and a `?host=` socket kept)."""
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


POLICY = """
version: "1"
name: bench
approval_policies:
  - name: bench
    approvers: [alice@bench.test]
    quorum: 1
    timeout: 1h
    channels: [web]
tools:
  - name: deploy
    action: require_approval
    approval_policy: bench
defaults:
  unknown_tools: deny
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- setup ---------------------------------------------------------------------------------------


async def admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def prepare(database_url: str, policy: str = POLICY, name: str = "bench") -> dict[str, str]:
    """Migrate the scratch database and create an org, an agent key (dev@NAME.test, a viewer's), alice@NAME.test's
    approver key, and `policy`."""
    from backend import db
    from backend.accounts import service as accounts
    from backend.audit.service import Actor
    from backend.bus import Bus
    from backend.policy_store import service as policies

    engine = await db.connect(database_url)
    try:
        await db.migrate()
        org = await accounts.create_org(name.capitalize(), name)
        dev = await accounts.add_user(org["id"], f"dev@{name}.test", role="viewer")
        alice = await accounts.add_user(org["id"], f"alice@{name}.test", role="approver")
        agent, _ = await accounts.create_key(org["id"], dev["id"], f"{name}-agent", scope="agent")
        approver, _ = await accounts.create_key(org["id"], alice["id"], "alice-approver", scope="approver")
        await policies.apply(org["id"], policy, Actor.system("bench"), Bus(None))
    finally:
        await db.disconnect(engine)
    return {"agent": agent, "approver": approver}


async def start_api(database_url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "PRELOOP_DATABASE_URL": database_url,
        "PRELOOP_REDIS_URL": REDIS_URL,
        "PRELOOP_DATA_DIR": str(data_dir),
        "PRELOOP_DEMO": "false",
        "PRELOOP_SECRET_KEY": "bench",
        "PRELOOP_PORT": str(port),
        "PRELOOP_LOG_LEVEL": "warning",
        "PRELOOP_MAX_WAIT_SECONDS": "900",  # phase (b) parks thousands of waiters for minutes
    }
    process = _spawn(env)
    url = f"http://127.0.0.1:{port}"
    await wait_healthy(process, f"{url}/health", "the API process")
    return process, url


async def wait_healthy(process: subprocess.Popen[bytes], url: str, what: str, ready: str | None = None) -> None:
    """Poll `url` until it answers 200 (with `status == ready` when given); kill `process` if it never does."""
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as probe:
        while True:
            try:
                answer = await probe.get(url)
                if answer.status_code == 200 and (ready is None or answer.json().get("status") == ready):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{what} did not start")
            await asyncio.sleep(0.1)


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).parent / "preloop"), "serve", "--no-worker"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- clients -------------------------------------------------------------------------------------


class Hub:
    """The bench's view of the API: create, approve, and raw long-poll sockets (cheap at 5,000)."""

    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.tokens = tokens
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.agent = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {tokens['agent']}"},
                                       timeout=120, limits=limits)
        self.approver = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {tokens['approver']}"},
                                          timeout=120, limits=limits)

    async def close(self) -> None:
        await self.agent.aclose()
        await self.approver.aclose()

    async def create(self, n: int) -> str:
        response = await self.agent.post("/api/v1/approvals", json={"tool": "deploy", "arguments": {"n": n}})
        if response.status_code != 201:
            raise RuntimeError(f"create failed: {response.status_code} {response.text[:200]}")
        return str(response.json()["id"])

    async def approve(self, request_id: str) -> float:
        response = await self.approver.post(f"/api/v1/approvals/{request_id}/approve", json={})
        if response.status_code != 200:
            raise RuntimeError(f"approve failed: {response.status_code} {response.text[:200]}")
        return time.perf_counter()

    async def long_poll(self, request_id: str, wait_seconds: int = 900) -> float:
        """One GET /approvals/wait on its own socket; the time it returned with a decision."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                f"GET /api/v1/approvals/wait?ids={request_id}&timeout={wait_seconds} HTTP/1.1\r\n"
                f"Host: {self.host}\r\nAuthorization: Bearer {self.tokens['agent']}\r\nConnection: close\r\n\r\n"
                .encode()
            )
            await writer.drain()
            raw = await reader.read()
            done = time.perf_counter()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or not json.loads(body)["decided"]:
            raise RuntimeError(f"long-poll ended without a verdict: {raw[:200]!r}")
        return done


async def bounded(limit: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


async def db_poller(database_url: str, request_id: str, every: float = 2.0) -> float:
    """The baseline: ask the database every 2 s until the request is decided."""
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            status = await conn.fetchval("SELECT status FROM approval_request WHERE id = $1", uuid.UUID(request_id))
            if status != "pending":
                return time.perf_counter()
            await asyncio.sleep(every)
    finally:
        await conn.close()


# --- phases --------------------------------------------------------------------------------------


async def verdict_latency(hub: Hub, count: int, batch: int = 50) -> list[float]:
    """ms from the approve call returning to the parked waiter returning (clipped at 0)."""
    latencies: list[float] = []
    counter = 0
    while counter < count:
        size = min(batch, count - counter)
        ids = await bounded(16, [lambda n=counter + i: hub.create(n) for i in range(size)])
        counter += size
        waiters = [asyncio.create_task(hub.long_poll(rid)) for rid in ids]
        await asyncio.sleep(0.3)  # let every long-poll reach the hub and park
        approved = [await hub.approve(rid) for rid in ids]
        returned = await asyncio.gather(*waiters)
        latencies += [max(0.0, (r - a) * 1000) for r, a in zip(returned, approved, strict=True)]
    return latencies


async def baseline_latency(hub: Hub, database_url: str, count: int) -> tuple[list[float], list[float]]:
    """The same verdicts watched both ways at once: long-poll and a 2 s database poll."""
    ids = await bounded(16, [lambda n=i: hub.create(1_000_000 + n) for i in range(count)])
    pollers = [asyncio.create_task(db_poller(database_url, rid)) for rid in ids]
    waiters = [asyncio.create_task(hub.long_poll(rid)) for rid in ids]
    await asyncio.sleep(0.3)
    approved = []
    for rid in ids:
        approved.append(await hub.approve(rid))
        await asyncio.sleep(2.0 / count)  # spread verdicts over one poll period
    polled = await asyncio.gather(*pollers)
    pushed = await asyncio.gather(*waiters)
    baseline = [max(0.0, (p - a) * 1000) for p, a in zip(polled, approved, strict=True)]
    push = [max(0.0, (p - a) * 1000) for p, a in zip(pushed, approved, strict=True)]
    return baseline, push


async def many_pending(hub: Hub, pid: int, count: int) -> dict[str, float]:
    started = time.perf_counter()
    ids = await bounded(32, [lambda n=i: hub.create(2_000_000 + n) for i in range(count)])
    create_seconds = time.perf_counter() - started
    rss_before = rss_mb(pid)
    waiters: list[asyncio.Task[float]] = []
    for offset in range(0, count, 500):  # open sockets in waves so the listen backlog keeps up
        waiters += [asyncio.create_task(hub.long_poll(rid)) for rid in ids[offset : offset + 500]]
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # every waiter parked
    peak = rss_mb(pid)
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    approved = await bounded(16, [lambda rid=rid: hub.approve(rid) for rid in ids])
    returned = await asyncio.gather(*waiters)
    sampling = False
    await sampler
    latencies = [max(0.0, (r - a) * 1000) for r, a in zip(returned, approved, strict=True)]
    return {
        "create_seconds": create_seconds,
        "rss_idle_mb": rss_before,
        "rss_peak_mb": peak,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
    }


async def throughput(hub: Hub, count: int, concurrency: int = 16) -> float:
    async def one(n: int) -> None:
        await hub.approve(await hub.create(3_000_000 + n))

    started = time.perf_counter()
    await bounded(concurrency, [lambda n=i: one(n) for i in range(count)])
    return count / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=50)
    parser.add_argument("--pending", type=int, default=5000)
    parser.add_argument("--throughput", type=int, default=1000)
    args = parser.parse_args()

    name = f"preloop_bench_{os.getpid()}"
    await admin_sql(f'CREATE DATABASE "{name}"')
    database_url = url_for_database(name)
    data_dir = Path(f"/tmp/{name}")
    process = None
    try:
        tokens = await prepare(database_url)
        process, url = await start_api(database_url, data_dir)
        hub = Hub(url, tokens)
        try:
            t0 = time.perf_counter()
            pushed = await verdict_latency(hub, args.requests)
            print(f"(a) long-poll verdict latency over {len(pushed)} requests: "
                  f"p50 {pct(pushed, 50):.2f} ms, p99 {pct(pushed, 99):.2f} ms, max {max(pushed):.2f} ms "
                  f"[{time.perf_counter() - t0:.1f}s]")
            baseline, side = await baseline_latency(hub, database_url, args.baseline)
            print(f"    same run, {len(baseline)} requests watched both ways: DB poll every 2 s p50 "
                  f"{pct(baseline, 50):.0f} ms, p99 {pct(baseline, 99):.0f} ms; long-poll p50 {pct(side, 50):.2f} ms "
                  f"-> {pct(baseline, 50) / max(pct(side, 50), 0.01):.0f}x faster at p50")
            t0 = time.perf_counter()
            pending = await many_pending(hub, process.pid, args.pending)
            print(f"(b) {args.pending} pending, one long-poll each: created in {pending['create_seconds']:.1f}s; "
                  f"API RSS {pending['rss_idle_mb']:.0f} MB before waiters, peak {pending['rss_peak_mb']:.0f} MB; "
                  f"verdict p50 {pending['p50_ms']:.1f} ms, p99 {pending['p99_ms']:.1f} ms "
                  f"[{time.perf_counter() - t0:.1f}s]")
            rate = await throughput(hub, args.throughput)
            print(f"(c) create+approve throughput, 16 clients, {args.throughput} requests: {rate:.0f}/s")
        finally:
            await hub.close()
        print(
            f"RESULT verdict_p50_ms={pct(pushed, 50):.2f} verdict_p99_ms={pct(pushed, 99):.2f} "
            f"baseline_p50_ms={pct(baseline, 50):.0f} pending={args.pending} "
            f"api_rss_mb={pending['rss_peak_mb']:.0f} throughput_per_s={rate:.0f}"
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
