"""Approval cycle throughput on PostgreSQL: create -> approve -> claim -> report from 32 clients.

Each API process is `preloop serve --no-worker` in its own process on a scratch database this
script creates and drops (Redis: PRELOOP_BENCH_REDIS_URL). Two code paths run in the same
invocation, alternating round by round so machine noise hits both alike:

- `new`: this checkout's `preloop`;
- `baseline`: another checkout's `preloop` (`--baseline-preloop`, default /work/main/.venv/bin/preloop;
  skipped when missing), e.g. the commit before the query work.

Queries are counted on the wire, the same way for both paths: for a counting phase each API process
talks to PostgreSQL through a small proxy in this script that reads the frontend protocol and
counts statements executed (simple `Query` + extended `Execute` messages, BEGIN/COMMIT and
advisory locks included) and round trips (`Query` + `Sync`). Throughput phases connect directly.

`--scale` also runs two API processes of the new path behind one PostgreSQL (clients split
between them) and reports the scaling. Run: `.venv/bin/python bench/throughput.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json as _json
import os
import resource
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from approvals import (  # noqa: E402
    PG_ADMIN_URL,
    REDIS_URL,
    _free_port,
    admin_sql,
    pct,
    prepare,
    url_for_database,
    wait_healthy,
)

NEW_PRELOOP = str(Path(sys.executable).parent / "preloop")
CLIENT = "lean"  # or "httpx" (--client); both paths of a run use the same one


class WireCounter:
    """A TCP proxy to PostgreSQL that counts what the client sends."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.statements = 0
        self.round_trips = 0
        self.texts: list[str] | None = None  # when a list: the text of each Query / Parse, in order
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def reset(self) -> None:
        self.statements = self.round_trips = 0

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        # When either side hangs up, close both (PostgreSQL keeps its side open until the proxy closes it).
        both = [asyncio.ensure_future(self._frontend(reader, up_writer)),
                asyncio.ensure_future(self._pipe(up_reader, writer))]
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        writer.close()
        up_writer.close()
        for task in both:
            task.cancel()
        await asyncio.gather(*both, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Untyped startup packets first (SSLRequest / GSSENCRequest are answered by one byte, then the
        # real StartupMessage follows); after that every message is type byte + int32 length.
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            body = await reader.readexactly(length - 8)
            writer.write(head + body)
            await writer.drain()
            if code not in (80877103, 80877104):
                break
        prepared: dict[str, str] = {}
        while True:
            head = await reader.readexactly(5)
            kind = head[:1]
            (length,) = struct.unpack("!i", head[1:])
            body = await reader.readexactly(length - 4)
            if kind == b"P":  # Parse: statement name, query text (names are per connection)
                name, text = body.decode(errors="replace").split("\0")[:2]
                prepared[name] = text
            if self.texts is not None and kind in (b"Q", b"B"):
                text = body.decode(errors="replace")
                self.texts.append(prepared.get(text.split("\0")[1], "?") if kind == b"B" else text.rstrip("\0"))
            if kind == b"Q":
                self.statements += 1
                self.round_trips += 1
            elif kind == b"E":
                self.statements += 1
            elif kind == b"S":
                self.round_trips += 1
            writer.write(head + body)
            await writer.drain()


async def start_api(preloop: str, database_url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
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
    }
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    with (data_dir / f"api-{port}.log").open("ab") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - a bench, started once per phase
            [preloop, "serve", "--no-worker"], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    await wait_healthy(process, f"{url}/health", f"the API process ({preloop})")
    return process, url


def _cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuSplit:
    """CPU used during a phase by the API processes, the PostgreSQL backends serving the bench's
    database, and this client process (/proc/<pid>/stat deltas)."""

    def __init__(self, api_pids: list[int], database: str) -> None:
        self.api_pids, self.database = api_pids, database
        self.start: dict[str, float] = {}
        self.pg_start: dict[int, float] = {}

    async def _pg_pids(self) -> list[int]:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database)
        finally:
            await conn.close()
        return [r["pid"] for r in rows]

    async def begin(self) -> None:
        self.pg_start = {pid: _cpu_seconds(pid) for pid in await self._pg_pids()}
        self.start = {"api": sum(_cpu_seconds(p) for p in self.api_pids), "client": _own_cpu_seconds()}

    async def end(self, cycles: int) -> dict[str, float]:
        """Milliseconds of CPU per cycle: api, postgres, client."""
        pg = sum(_cpu_seconds(pid) - self.pg_start.get(pid, 0.0) for pid in await self._pg_pids())
        api = sum(_cpu_seconds(p) for p in self.api_pids) - self.start["api"]
        client = _own_cpu_seconds() - self.start["client"]
        return {k: v * 1000 / cycles for k, v in (("api", api), ("postgres", pg), ("client", client))}


def _cpu_line(cpu: dict[str, float]) -> str:
    return (f"CPU ms/cycle: API {cpu['api']:.1f}, PostgreSQL {cpu['postgres']:.1f}, client {cpu['client']:.1f} "
            f"-> API capacity {1000 / max(cpu['api'], 0.001):.0f} cycles/s per process")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


class LeanResponse:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code, self.content = status_code, body

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return _json.loads(self.content)


class LeanClient:
    """A minimal HTTP/1.1 keep-alive client (one connection per concurrent caller, JSON bodies only):
    httpx costs the bench ~13 ms of CPU per cycle on this machine, CPU the API and PostgreSQL share."""

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\n")
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open: list[asyncio.StreamWriter] = []

    async def post(self, path: str, json: Any) -> LeanResponse:  # httpx's parameter name
        body = _json.dumps(json).encode()
        request = f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        clock = time.monotonic()
        # A connection idle for a while may be closing on the server's side (uvicorn's keep-alive is 5 s).
        while self.idle and clock - self.idle[-1][2] > 2:
            self.idle.pop()[1].close()
        if self.idle:
            reader, writer, _ = self.idle.pop()
        else:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                raise httpx.ConnectError(str(exc)) from exc
            self.open.append(writer)
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if headers.get("transfer-encoding") == "chunked":
            content = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                content += await reader.readexactly(size + 2)
                content = content[:-2]
            await reader.readuntil(b"\r\n")
        else:
            content = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") != "close":
            self.idle.append((reader, writer, time.monotonic()))
        return LeanResponse(status, content)

    async def aclose(self) -> None:
        for writer in self.open:
            writer.close()


class Cycles:
    """Clients running create -> approve -> claim -> report against one or more API processes."""

    def __init__(self, urls: list[str], tokens: dict[str, str], clients: int) -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        self.pairs: list[tuple[Any, Any]] = [
            (
                httpx.AsyncClient(base_url=u, headers={"Authorization": f"Bearer {tokens['agent']}"},
                                  timeout=60, limits=limits),
                httpx.AsyncClient(base_url=u, headers={"Authorization": f"Bearer {tokens['approver']}"},
                                  timeout=60, limits=limits),
            ) if CLIENT == "httpx" else (LeanClient(u, tokens["agent"]), LeanClient(u, tokens["approver"]))
            for u in urls
        ]
        self.clients = clients
        self.serial = 0
        self.run_id = uuid.uuid4().hex  # distinct arguments per runner: no create attaches to an older request
        self.errors: list[str] = []

    async def close(self) -> None:
        for agent, approver in self.pairs:
            await agent.aclose()
            await approver.aclose()

    async def cycle(self, client: int) -> float:
        agent, approver = self.pairs[client % len(self.pairs)]
        self.serial += 1
        started = time.perf_counter()
        arguments = {"run": self.run_id, "n": self.serial}
        created = await agent.post("/api/v1/approvals", json={"tool": "deploy", "arguments": arguments})
        if created.status_code != 201:
            raise RuntimeError(f"create: {created.status_code} {created.text[:200]}")
        body = created.json()
        rid = body["id"]
        approved = await approver.post(f"/api/v1/approvals/{rid}/approve", json={})
        if approved.status_code != 200 or approved.json()["status"] != "approved":
            raise RuntimeError(f"approve: {approved.status_code} {approved.text[:200]}")
        claimed = await agent.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": body["arguments_hash"]})
        if claimed.status_code != 200 or claimed.json()["status"] != "executing":
            raise RuntimeError(f"claim: {claimed.status_code} {claimed.text[:200]}")
        reported = await agent.post(f"/api/v1/approvals/{rid}/outcome", json={"success": True, "result_summary": "ok"})
        if reported.status_code != 200 or reported.json()["status"] != "executed":
            raise RuntimeError(f"report: {reported.status_code} {reported.text[:200]}")
        return (time.perf_counter() - started) * 1000

    async def run(self, count: int) -> tuple[float, list[float]]:
        """`count` cycles from `clients` concurrent clients: (cycles per second, latencies ms)."""
        latencies: list[float] = []
        remaining = count

        async def client(index: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    latencies.append(await self.cycle(index))
                except httpx.TransportError as exc:  # counted, and the run goes on
                    self.errors.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(self.clients)))
        return count / (time.perf_counter() - started), latencies


async def count_queries(
    preloop: str, database_url: str, data_dir: Path, tokens: dict[str, str], cycles: int, *, show: bool = False
) -> tuple[float, float]:
    """(statements, round trips) per cycle, measured on the wire through WireCounter."""
    parts = urlsplit(database_url)
    proxy = WireCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    proxied = database_url.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{proxy.port}")
    process, url = await start_api(preloop, proxied, data_dir)
    runner = Cycles([url], tokens, 4)
    try:
        await runner.run(20)  # warm caches (prepared statements, policy, key lookups)
        proxy.reset()
        await runner.run(cycles)
        if show:  # one cycle's statements, for finding what to cut (Parse only shows new statements)
            proxy.texts = []
            await Cycles([url], tokens, 1).cycle(0)
            for text in proxy.texts:
                print("   ", " ".join(text.split())[:160])
        return proxy.statements / cycles, proxy.round_trips / cycles
    finally:
        await runner.close()
        stop(process)
        await proxy.stop()


async def _scalar(database_url: str, sql: str, *args: Any) -> Any:
    """The first value `sql` returns on its own connection to the scratch database (None for a command)."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _vacuum(database_url: str) -> None:
    """What autovacuum does between runs in production: without it every update of a run leaves a dead
    row version behind (the chain head is updated ~5 times a cycle, each request 3 times) and PostgreSQL's
    CPU per cycle grows over the run, more for whichever path runs later."""
    await _scalar(database_url, "VACUUM (ANALYZE)")


async def _rows_scanned(database_url: str) -> int:
    """Rows PostgreSQL has read by sequential scans in the scratch database so far (a plan that scans a
    growing table shows here long before it shows in the CPU figures)."""
    return int(await _scalar(database_url, "SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=600, help="cycles per round and path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--count-cycles", type=int, default=100)
    parser.add_argument("--baseline-preloop", default="/work/main/.venv/bin/preloop")
    parser.add_argument("--show", action="store_true", help="print one cycle's statements")
    parser.add_argument("--count-only", action="store_true")
    parser.add_argument("--scale", action="store_true", help="also two API processes of the new path")
    parser.add_argument("--pg-socket", default="", metavar="DIR",
                        help="the new path's API processes reach PostgreSQL through its unix socket in DIR, e.g. "
                        "/var/run/postgresql (the baseline and the counting phase keep TCP); give --baseline-preloop "
                        "this checkout's preloop to measure the socket alone")
    parser.add_argument("--client", choices=["lean", "httpx"], default="lean",
                        help="HTTP client of the bench (lean: a minimal keep-alive HTTP/1.1 client)")
    parser.add_argument("--prime", type=int, default=2000,
                        help="cycles run once on the new path before the first measured run, so the tables "
                        "are not tiny when they are analyzed (0: none)")
    parser.add_argument("--vacuum", choices=["round", "off"], default="round",
                        help="round: VACUUM ANALYZE the scratch database before each measured run, as "
                        "autovacuum would in production (a server may have it off, as this machine's CI "
                        "configuration does; every path then starts from the same tables); off: never")
    args = parser.parse_args()
    global CLIENT  # set once, before any client exists
    CLIENT = args.client

    paths = {"new": NEW_PRELOOP}
    if args.baseline_preloop and Path(args.baseline_preloop).exists():  # noqa: ASYNC240
        paths["baseline"] = args.baseline_preloop
    name = f"preloop_tp_{os.getpid()}"
    await admin_sql(f'CREATE DATABASE "{name}"')
    database_url = url_for_database(name)
    api_urls = dict.fromkeys(paths, database_url)
    if args.pg_socket:
        api_urls["new"] = url_for_database(name, f"postgres://{urlsplit(PG_ADMIN_URL).username}@/?host={args.pg_socket}")
    data_dir = Path(f"/tmp/{name}")
    try:
        tokens = await prepare(database_url)
        autovacuum = await _scalar(database_url, "SELECT current_setting('autovacuum')")
        print(f"PostgreSQL autovacuum: {autovacuum}; the bench vacuums: "
              f"{'before each run' if args.vacuum == 'round' else 'never'}", flush=True)
        queries: dict[str, tuple[float, float]] = {}
        for label, preloop in paths.items():
            queries[label] = await count_queries(
                preloop, database_url, data_dir, tokens, args.count_cycles, show=args.show
            )
            print(f"[{label}] per cycle on the wire: {queries[label][0]:.1f} statements, "
                  f"{queries[label][1]:.1f} round trips", flush=True)
        if args.count_only:
            return
        if args.prime:
            # Plans are made once per pooled connection; with statistics of a table a hundred rows long
            # PostgreSQL rightly scans it whole, and keeps doing so as a run grows it by thousands (autovacuum
            # would analyze it again in time). With a history of a few thousand requests it finds rows by index.
            process, url = await start_api(NEW_PRELOOP, api_urls["new"], data_dir)
            runner = Cycles([url], tokens, args.clients)
            try:
                await runner.run(args.prime)
            finally:
                await runner.close()
                stop(process)
            print(f"primed the tables with {args.prime} cycles", flush=True)
        rates: dict[str, list[float]] = {label: [] for label in paths}
        latencies: dict[str, list[float]] = {label: [] for label in paths}
        cpus: dict[str, list[dict[str, float]]] = {label: [] for label in paths}
        for round_no in range(args.rounds):
            order = list(paths) if round_no % 2 == 0 else list(reversed(paths))
            for label in order:
                if args.vacuum == "round":
                    await _vacuum(database_url)
                process, url = await start_api(paths[label], api_urls[label], data_dir)
                runner = Cycles([url], tokens, args.clients)
                split = CpuSplit([process.pid], name)
                try:
                    await runner.run(64)  # warm-up
                    scanned = await _rows_scanned(database_url)
                    await split.begin()
                    rate, lat = await runner.run(args.cycles)
                    cpu = await split.end(args.cycles)
                finally:
                    await runner.close()
                    stop(process)
                await asyncio.sleep(1.1)  # the backends report their statistics within a second
                scanned = (await _rows_scanned(database_url) - scanned) / args.cycles
                rates[label].append(rate)
                cpus[label].append(cpu)
                if runner.errors:
                    print(f"  {len(runner.errors)} cycles failed on the transport: {runner.errors[0]}", flush=True)
                latencies[label] += lat
                print(f"round {round_no + 1} [{label}] {rate:.0f} cycles/s, p50 {pct(lat, 50):.0f} ms, "
                      f"p99 {pct(lat, 99):.0f} ms; {_cpu_line(cpu)}; rows read by sequential scans per cycle "
                      f"{scanned:.0f}; load {os.getloadavg()[0]:.1f}", flush=True)
        for label in paths:
            best = sorted(rates[label])[len(rates[label]) // 2]
            print(f"[{label}] median {best:.0f} cycles/s over {args.rounds} rounds "
                  f"(all: {', '.join(f'{r:.0f}' for r in rates[label])}), p99 {pct(latencies[label], 99):.0f} ms")
            mean = {k: sum(c[k] for c in cpus[label]) / len(cpus[label]) for k in ("api", "postgres", "client")}
            print(f"[{label}] mean {_cpu_line(mean)}")
        if args.scale:
            if args.vacuum == "round":
                await _vacuum(database_url)
            one_rate = sorted(rates["new"])[len(rates["new"]) // 2]
            procs = [await start_api(NEW_PRELOOP, api_urls["new"], data_dir) for _ in range(2)]
            runner = Cycles([u for _, u in procs], tokens, args.clients)
            split = CpuSplit([p.pid for p, _ in procs], name)
            try:
                await runner.run(64)
                await split.begin()
                rate, lat = await runner.run(args.cycles)
                cpu = await split.end(args.cycles)
            finally:
                await runner.close()
                for p, _ in procs:
                    stop(p)
            print(f"[new x2 API processes] {rate:.0f} cycles/s ({rate / one_rate:.2f}x one process), "
                  f"p99 {pct(lat, 99):.0f} ms; machine: {os.cpu_count()} cores shared with the database and clients; "
                  f"{_cpu_line(cpu)} (API = both processes' CPU together)")
        new_rate = sorted(rates["new"])[len(rates["new"]) // 2]
        print(f"RESULT cycles_per_s={new_rate:.0f} p99_ms={pct(latencies['new'], 99):.0f} "
              f"queries_per_cycle={queries['new'][0]:.0f}")
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
