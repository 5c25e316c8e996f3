"""Mixed load on the scaled mode: evaluations, creations, decisions, long-polls and gateway calls at once.

The cluster is real processes, as a scaled deployment runs them, on a scratch PostgreSQL database
this script creates and drops (Redis: PRELOOP_BENCH_REDIS_URL): two `preloop serve --no-worker` API
processes, one `preloop worker`, one `preloop gateway --http` in front of the demo MCP server
(stdio). `--clients` concurrent async clients (httpx, and the MCP SDK's `Client` for the gateway)
each loop over a weighted mix until `--seconds` have passed:

- `evaluate`: POST /api/v1/evaluate (what the active policy decides, and why), agent key;
- an approval cycle by the agent key: `create` (POST /api/v1/approvals), `wait` (the long-poll
  GET /api/v1/approvals/wait, repeated until decided), then `claim` + `outcome` when approved;
- `gw_allowed`: an allowed tools/call (read_logs) through the gateway;
- `gw_held`: a held tools/call (drop_table) through the gateway, released by a decider.

Two decider tasks with the approver key list what is pending (`inbox`) and `decide` each request:
approve, or decline one in five with a reason. After the window, running cycles drain (deciders
keep deciding), then every request the bench created is looked up in the hub: `lost` counts those
missing, duplicated, or not in a final state with an explanation (executed, declined / expired /
cancelled / failed with an outcome). Errors are counted by kind: 5xx, transport, unexpected 4xx,
gateway (a tools/call whose result does not match the decision), check (a 2xx with a wrong body).

Baseline, in the same run: the same mix for `--baseline-seconds` against another checkout's
`preloop` (`--baseline-preloop`, default /work/main/.venv/bin/preloop; skipped when missing), a
cluster of its own on its own scratch database, run and accounted for before this checkout's (two
clusters at once would exceed PostgreSQL's 100 connections: 3 pools of 20 each); the ratio
new/baseline is printed. The phases run one after the other, so machine noise can differ.

`wait` and `gw_held` take as long as the deciders do, so the overall p99 is over the other
(request/response) operations; ops_per_s counts every operation. Run: `.venv/bin/python bench/load.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from approvals import (  # noqa: E402
    REDIS_URL,
    _free_port,
    admin_sql,
    pct,
    prepare,
    url_for_database,
    wait_healthy,
)
from mcp import Client  # noqa: E402

NEW_PRELOOP = str(Path(sys.executable).parent / "preloop")
POLICY = f"""
version: "1"
name: load
servers:
  - name: demo
    command: [{sys.executable}, -m, mcp_gateway.demo_upstream]
approval_policies:
  - name: ops
    approvers: [alice@load.test]
    quorum: 1
    timeout: 1h
    channels: [web]
tools:
  - name: deploy
    action: require_approval
    approval_policy: ops
  - name: drop_table
    action: require_approval
    approval_policy: ops
  - name: read_logs
    action: allow
defaults:
  unknown_tools: deny
  justification: none
"""
MIX = {"evaluate": 35, "cycle": 25, "gw_allowed": 25, "gw_held": 15}
DECISION_BOUND = {"wait", "gw_held"}
"""Operations whose latency is the deciders' pace, left out of the overall p99."""
FINAL = {"executed", "declined", "expired", "cancelled", "failed"}
HOLD_WINDOW = 50
EXPECTED = {"deploy": "require_approval", "drop_table": "require_approval", "read_logs": "allow", "rm_rf": "deny"}
"""What the policy decides for each tool the evaluations ask about."""


class Cluster:
    """API processes, a worker and a gateway of one `preloop` executable; logs in `data_dir`."""

    def __init__(self, preloop: str, database_url: str, data_dir: Path, tokens: dict[str, str]) -> None:
        self.preloop, self.data_dir, self.tokens = preloop, data_dir, tokens
        self.env = {
            **os.environ,
            "PRELOOP_DATABASE_URL": database_url,
            "PRELOOP_REDIS_URL": REDIS_URL,
            "PRELOOP_DATA_DIR": str(data_dir),
            "PRELOOP_DEMO": "false",
            "PRELOOP_SECRET_KEY": "bench",
            "PRELOOP_LOG_LEVEL": "warning",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.api_urls: list[str] = []
        self.gateway_url = ""

    def _spawn(self, command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.data_dir / log_name).open("ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    async def _healthy(self, process: subprocess.Popen[bytes], url: str, what: str, ready: str | None = None) -> None:
        await wait_healthy(process, url, f"{what} ({self.preloop}); see {self.data_dir}", ready)

    async def start(self, apis: int = 2) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(apis):
            port = _free_port()
            process = self._spawn([self.preloop, "serve", "--no-worker"], {**self.env, "PRELOOP_PORT": str(port)},
                                  f"api-{port}.log")
            self.api_urls.append(f"http://127.0.0.1:{port}")
            await self._healthy(process, f"{self.api_urls[-1]}/health", "an API process")
        worker = self._spawn([self.preloop, "worker"], self.env, "worker.log")
        port = _free_port()
        gateway_env = {**os.environ, "PRELOOP_API_URL": self.api_urls[-1], "PRELOOP_API_KEY": self.tokens["agent"],
                       "PRELOOP_GATEWAY_DATA_DIR": str(self.data_dir / "gateway")}
        gateway = self._spawn([self.preloop, "gateway", "--http", f"127.0.0.1:{port}", "--hold-window",
                               str(HOLD_WINDOW)], gateway_env, "gateway.log")
        await self._healthy(gateway, f"http://127.0.0.1:{port}/health", "the gateway", ready="ok")
        self.gateway_url = f"http://127.0.0.1:{port}/mcp"
        if worker.poll() is not None:
            raise RuntimeError(f"the worker ({self.preloop}) exited; see {self.data_dir}/worker.log")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


class Load:
    """The clients, the deciders, and what they saw."""

    def __init__(self, cluster: Cluster, clients: int, seed: int = 7) -> None:
        self.cluster, self.clients = cluster, clients
        limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
        timeout = httpx.Timeout(30, read=90)  # longer than a long-poll
        self.http = {
            who: [httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {cluster.tokens[who]}"},
                                    timeout=timeout, limits=limits) for url in cluster.api_urls]
            for who in ("agent", "approver")
        }
        self.random = random.Random(seed)
        self.run = uuid.uuid4().hex[:12]  # unique arguments: no create attaches to an older request
        self.serial = 0
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []  # the first few error texts, for --show
        self.created: list[str] = []  # ids of requests the agent created through the API
        self.held: set[str] = set()  # table names of held gateway calls issued
        self.decided: dict[str, str] = {}  # approval id -> approved / declined, by the deciders
        self.decided_table: dict[str, str] = {}  # drop_table's table -> the decision
        self.deciding: set[str] = set()
        self.stopping = False
        self.window_start = 0.0
        self.done: list[tuple[float, str, float]] = []  # (seconds into the window, kind, ms) of each operation

    async def close(self) -> None:
        for clients in self.http.values():
            for client in clients:
                await client.aclose()

    def _error(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{kind}: {text[:300]}")

    async def _call(self, kind: str, who: str, index: int, method: str, path: str, expect: int = 200,
                    **kwargs: Any) -> dict[str, Any] | list[Any] | None:
        """One timed HTTP operation; None (and an error counted by kind) unless it answered `expect`."""
        client = self.http[who][index % len(self.http[who])]
        started = time.perf_counter()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self._error("transport", f"{kind}: {type(exc).__name__}: {exc}")
            return None
        self._timed(kind, started)
        if response.status_code != expect:
            code = response.status_code
            bucket = "5xx" if code >= 500 else "unexpected_4xx" if code >= 400 else "check"
            self._error(bucket, f"{kind}: {response.status_code} {response.text}")
            return None
        body: dict[str, Any] | list[Any] = response.json()
        return body

    def _timed(self, kind: str, started: float) -> None:
        now = time.perf_counter()
        self.latency[kind].append((now - started) * 1000)
        self.done.append((now - self.window_start, kind, (now - started) * 1000))

    def over(self, seconds: float) -> tuple[float, float]:
        """(operations per second, p99 ms of the request/response ones) over the window's first `seconds`."""
        ops = [(kind, ms) for at, kind, ms in self.done if at <= seconds]
        direct = [ms for kind, ms in ops if kind not in DECISION_BOUND | {"lookup"}]
        return len(ops) / seconds, pct(direct, 99)

    def _next(self) -> int:
        self.serial += 1
        return self.serial

    # --- the operations --------------------------------------------------------------------------

    async def evaluate(self, index: int) -> None:
        tool = self.random.choice(list(EXPECTED))
        body = await self._call("evaluate", "agent", index, "POST", "/api/v1/evaluate",
                                json={"tool": tool, "args": {"n": self._next()}})
        if isinstance(body, dict) and body.get("decision") != EXPECTED[tool]:
            self._error("check", f"evaluate {tool}: {body.get('decision')}, not {EXPECTED[tool]}")

    async def cycle(self, index: int) -> None:
        created = await self._call("create", "agent", index, "POST", "/api/v1/approvals", expect=201,
                                   json={"tool": "deploy", "arguments": {"run": self.run, "n": self._next()}})
        if not isinstance(created, dict):
            return
        rid = created["id"]
        self.created.append(rid)
        status, failures = created["status"], 0
        while status == "pending":
            answer = await self._call("wait", "agent", index + 1, "GET", "/api/v1/approvals/wait",
                                      params={"ids": rid, "timeout": 20})
            if not isinstance(answer, dict):  # counted; a waiting agent asks again, as a real one does
                failures += 1
                if failures == 3:
                    return
                await asyncio.sleep(1)
                continue
            for item in answer.get("decided") or []:
                if item["id"] == rid:
                    status = item["status"]
        if status != "approved":
            if status != "declined" or self.decided.get(rid) != "declined":
                self._error("check", f"cycle {rid}: ended {status}, decided {self.decided.get(rid)}")
            return
        claimed = await self._call("claim", "agent", index, "POST", f"/api/v1/approvals/{rid}/claim",
                                   json={"arguments_hash": created["arguments_hash"]})
        if not isinstance(claimed, dict):
            return
        reported = await self._call("outcome", "agent", index, "POST", f"/api/v1/approvals/{rid}/outcome",
                                    json={"success": True, "result_summary": "ok"})
        if isinstance(reported, dict) and reported.get("status") != "executed":
            self._error("check", f"outcome {rid}: {reported.get('status')}")

    async def gw_allowed(self, mcp: Client) -> None:
        started = time.perf_counter()
        result = await mcp.call_tool("read_logs", {"service": f"svc-{self._next() % 7}", "lines": 3})
        self._timed("gw_allowed", started)
        if result.is_error:
            self._error("gateway", f"read_logs: {result.content}")

    async def gw_held(self, mcp: Client) -> None:
        table = f"t_{self.run}_{self._next()}"
        self.held.add(table)
        started = time.perf_counter()
        result = await mcp.call_tool("drop_table", {"table": table, "database": "load"})
        self._timed("gw_held", started)
        verdict = self.decided_table.get(table)
        if (verdict == "approved" and not result.is_error) or (verdict == "declined" and result.is_error):
            return
        self._error("gateway", f"drop_table {table} decided {verdict}, result error={result.is_error}: "
                               f"{str(result.content)[:200]}")

    async def client(self, index: int) -> None:
        """One agent: the weighted mix until the window closes (a started cycle runs to its end)."""
        kinds, weights = list(MIX), list(MIX.values())
        while not self.stopping:
            try:
                async with Client(self.cluster.gateway_url) as mcp:
                    while not self.stopping:
                        kind = self.random.choices(kinds, weights)[0]
                        if kind == "evaluate":
                            await self.evaluate(index)
                        elif kind == "cycle":
                            await self.cycle(index)
                        elif kind == "gw_allowed":
                            await self.gw_allowed(mcp)
                        else:
                            await self.gw_held(mcp)
            except Exception as exc:  # a broken MCP session: counted, then a new one
                self._error("gateway", f"session: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2)

    async def decider(self, index: int) -> None:
        """An approver working the inbox: approve, or decline one in five with a reason."""
        while True:
            pending = await self._call("inbox", "approver", index, "GET", "/api/v1/approvals",
                                       params={"status": "pending", "limit": 200})
            todo = [item for item in pending or [] if item["id"] not in self.deciding]
            for item in todo:
                self.deciding.add(item["id"])
            for item in todo:
                verdict = "declined" if self.random.random() < 0.2 else "approved"
                path = f"/api/v1/approvals/{item['id']}/{'decline' if verdict == 'declined' else 'approve'}"
                body = {"reason": "load bench"} if verdict == "declined" else {}
                table = str(item["arguments"].get("table")) if item["tool"] == "drop_table" else None
                # Noted before the call: the waiting agent may hear the verdict before this answer arrives.
                self.decided[item["id"]] = verdict
                if table is not None:
                    self.decided_table[table] = verdict
                if not isinstance(await self._call("decide", "approver", index, "POST", path, json=body), dict):
                    self.decided.pop(item["id"], None)
                    if table is not None:
                        self.decided_table.pop(table, None)
            if not todo:
                await asyncio.sleep(0.05)

    async def drive(self, seconds: float, drain: float = 90) -> float:
        """Run the mix for `seconds`; let running operations finish; return the window's length."""
        self.stopping = False
        deciders = [asyncio.create_task(self.decider(i)) for i in range(2)]
        started = time.perf_counter()
        self.window_start = started
        clients = [asyncio.create_task(self.client(i)) for i in range(self.clients)]
        await asyncio.sleep(seconds)
        self.stopping = True
        _, running = await asyncio.wait(clients, timeout=drain)
        for task in running:
            task.cancel()
            self._error("drain", "a client still busy after the drain")
        for task in deciders:
            task.cancel()
        await asyncio.gather(*clients, *deciders, return_exceptions=True)
        return seconds

    # --- accounting ------------------------------------------------------------------------------

    async def account(self) -> dict[str, Any]:
        """Every request created, looked up: counts by status, and what is lost."""
        statuses: Counter[str] = Counter()
        lost: list[str] = []
        gate = asyncio.Semaphore(16)

        async def one(rid: str) -> None:
            async with gate:
                row = await self._call("lookup", "approver", 0, "GET", f"/api/v1/approvals/{rid}")
            if not isinstance(row, dict):
                lost.append(f"{rid}: not found")
                return
            statuses[row["status"]] += 1
            if not _explained(row):
                lost.append(f"{rid}: {row['status']} {row.get('outcome')}")

        await asyncio.gather(*(one(rid) for rid in self.created))
        # Held gateway calls: the gateway created these; find them by their unique table name.
        rows: list[dict[str, Any]] = []
        while True:
            page = await self._call("lookup", "approver", 0, "GET", "/api/v1/approvals",
                                    params={"tool": "drop_table", "limit": 1000, "offset": len(rows)})
            if not isinstance(page, list):
                break
            rows += page
            if len(page) < 1000:
                break
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_table[str(row["arguments"].get("table"))].append(row)
        for table in sorted(self.held):
            found = by_table.get(table, [])
            if len(found) != 1:
                lost.append(f"held call {table}: {len(found)} requests")
                continue
            statuses[found[0]["status"]] += 1
            if not _explained(found[0]):
                lost.append(f"held call {table}: {found[0]['status']} {found[0].get('outcome')}")
        created = len(self.created) + len(self.held)
        return {"created": created, "found": sum(statuses.values()),
                "final": sum(n for s, n in statuses.items() if s in FINAL), "statuses": statuses, "lost": lost}


def _explained(row: dict[str, Any]) -> bool:
    """A final state the hub can explain: executed, or a decline / expiry / cancel / failure on record."""
    if row["status"] == "executed":
        return True
    return row["status"] in FINAL and bool(row.get("outcome"))


class Phase:
    """One code path: its scratch database, its cluster, its clients."""

    def __init__(self, label: str, preloop: str, clients: int) -> None:
        self.label, self.preloop, self.clients = label, preloop, clients
        self.name = f"preloop_load_{os.getpid()}_{label}"
        self.cluster: Cluster | None = None
        self.load: Load | None = None
        self.window = 0.0
        self.keep_logs = True

    async def start(self) -> None:
        await admin_sql(f'CREATE DATABASE "{self.name}"')
        database_url = url_for_database(self.name)
        tokens = await prepare(database_url, POLICY, "load")
        self.cluster = Cluster(self.preloop, database_url, Path(f"/tmp/{self.name}"), tokens)
        await self.cluster.start()
        self.load = Load(self.cluster, self.clients)

    async def drive(self, seconds: float) -> None:
        assert self.load is not None
        self.window += await self.load.drive(seconds)

    async def stop(self) -> None:
        if self.load is not None:
            await self.load.close()
        if self.cluster is not None:
            self.cluster.stop()
        await admin_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if not self.keep_logs and self.cluster is not None:
            shutil.rmtree(self.cluster.data_dir, ignore_errors=True)

    async def report(self, show: bool) -> dict[str, Any]:
        load = self.load
        assert load is not None
        accounting = await load.account()
        ops = load.over(self.window)[0]
        skip = DECISION_BOUND | {"lookup"}
        direct = [v for kind, values in load.latency.items() if kind not in skip for v in values]
        print(f"[{self.label}] {self.clients} clients, {self.window:.0f} s, 2 API processes + worker + gateway "
              f"({self.preloop})")
        for kind in sorted(set(load.latency) - {"lookup"}):
            values = load.latency[kind]
            print(f"  {kind:<11} n={len(values):<6} p50 {pct(values, 50):7.1f} ms  p99 {pct(values, 99):7.1f} ms")
        print(f"  overall     {ops:.0f} ops/s; p50 {pct(direct, 50):.1f} ms, p99 {pct(direct, 99):.1f} ms "
              f"(request/response ops; wait and gw_held are decision-bound)")
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(accounting["statuses"].items()))
        print(f"  requests    created {accounting['created']}, found {accounting['found']}, final "
              f"{accounting['final']} ({statuses}); lost {len(accounting['lost'])}")
        errors = sum(load.errors.values())
        kinds = ", ".join(f"{k} {n}" for k, n in load.errors.items())
        print(f"  errors      {errors}" + (f" ({kinds})" if errors else ""), flush=True)
        if show:
            for line in load.samples + accounting["lost"][:10]:
                print(f"    {line}")
        return {"ops": ops, "p99": pct(direct, 99), "errors": errors, "lost": len(accounting["lost"]),
                "over": load.over}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of the traffic window")
    parser.add_argument("--clients", type=int, default=16, help="concurrent agent clients")
    parser.add_argument("--baseline-preloop", default="/work/main/.venv/bin/preloop",
                        help="another checkout's preloop for the baseline ('' skips it)")
    parser.add_argument("--baseline-seconds", type=float, default=20)
    parser.add_argument("--show", action="store_true", help="print the first errors and lost requests")
    args = parser.parse_args()
    if args.seconds <= 0 or args.clients < 1:
        parser.error("--seconds must be > 0 and --clients at least 1")
    if not (args.baseline_preloop and Path(args.baseline_preloop).exists()):
        args.baseline_preloop = ""
    return args


async def main(args: argparse.Namespace) -> None:
    """The baseline's cluster, then this checkout's: one at a time (each holds up to 60 PostgreSQL
    connections: three processes with a pool of 20)."""
    results: dict[str, dict[str, Any]] = {}
    runs = [("new", NEW_PRELOOP, args.seconds)]
    if args.baseline_preloop and args.baseline_seconds > 0:
        runs.insert(0, ("baseline", args.baseline_preloop, args.baseline_seconds))
    else:
        print("[baseline] skipped: no --baseline-preloop")
    for label, preloop, seconds in runs:
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores", flush=True)
        phase = Phase(label, preloop, args.clients)
        try:
            await phase.start()
            await phase.drive(seconds)
            results[label] = await phase.report(args.show)
            if results[label]["errors"] or results[label]["lost"]:
                print(f"  logs kept in /tmp/{phase.name}")
            else:
                phase.keep_logs = False
        except RuntimeError as exc:
            if label == "new":
                raise
            print(f"[baseline] skipped: {exc}")
        finally:
            await phase.stop()
    if "baseline" in results:
        # Over equal windows: the new run's first --baseline-seconds (its database as young as the baseline's).
        base = results["baseline"]
        same = min(args.baseline_seconds, args.seconds)
        ops, p99 = results["new"]["over"](same)
        print(f"ratio new/baseline over the first {same:.0f} s of each: ops/s {ops / base['ops']:.2f}x "
              f"({ops:.0f} vs {base['ops']:.0f}), p99 {p99 / base['p99']:.2f}x ({p99:.0f} vs {base['p99']:.0f} ms); "
              "the phases run one after the other, so machine noise differs between them")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ours = results["new"]
    print(f"RESULT ops_per_s={ours['ops']:.0f} p99_ms={ours['p99']:.0f} errors={ours['errors']} lost={ours['lost']}")


if __name__ == "__main__":
    asyncio.run(main(parse()))
