"""One request to N approvers on email + Web Push: time from creation to the last delivery accepted.

A real hub database (PostgreSQL when reachable, else SQLite) and Redis, a local SMTP server
(aiosmtpd) and a local push service (HTTP, RFC 8030 endpoints) in this process, and the worker as
its own process (`preloop worker`), as a deployment runs it. Every approver has one push
subscription with its own keys. Ends with
`RESULT email_last_s=X push_last_s=X approvers=N` (target: under 5 s each).

On a shared machine one number says more about the neighbours than about the code, so
`python bench/notify.py --baseline REV` runs the bench of git revision REV (exported to a
temporary directory, with its own worker) and of this tree, alternately (`--rounds N`, default 1),
in the same run, and prints both, their ratio and the load average; the last line is still this
tree's RESULT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.settings import load_settings
from tests.helpers import auth, free_port
from tests.integration.notifications.conftest import new_browser

APPROVERS = int(os.environ.get("PRELOOP_BENCH_APPROVERS", "200"))
REDIS_URL = os.environ.get("PRELOOP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POLICY = """
version: "1"
approval_policies:
  - {name: everyone, teams: [oncall], quorum: 1, timeout: 1h, channels: [email, push]}
tools:
  - {name: deploy, server: infra, action: require_approval, approval_policy: everyone, risk: high}
"""


class Arrivals:
    def __init__(self) -> None:
        self.mail: list[float] = []
        self.push: list[float] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.mail.append(time.monotonic())
        return "250 OK"


def push_service(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with arrivals.lock:
                arrivals.push.append(time.monotonic())
            self.send_response(201)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.request_queue_size = 1024  # a push service takes many connections at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: a machine-load-independent cost of the fan-out."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    from _held import _drop_postgres as drop_postgres  # bench/ is on sys.path when run directly
    from _held import _scratch_postgres as scratch_postgres

    from backend.accounts import service as accounts
    from backend.app import create_app
    from backend.hub import Hub
    from tests.helpers import make_org

    arrivals = Arrivals()
    smtp_port = free_port()
    smtp = Controller(arrivals, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    pushes = push_service(arrivals)
    push_origin = f"http://127.0.0.1:{pushes.server_address[1]}"
    pg = await scratch_postgres()
    data_dir = Path(tempfile.mkdtemp(prefix="preloop-bench-notify-"))
    env = {
        "PRELOOP_DATABASE_URL": pg or f"sqlite:///{data_dir / 'preloop.db'}",
        "PRELOOP_REDIS_URL": REDIS_URL,
        "PRELOOP_DATA_DIR": str(data_dir),
        "PRELOOP_DEMO": "false",
        "PRELOOP_SECRET_KEY": "bench-secret",
        "PRELOOP_PUBLIC_URL": "http://hub.bench",
        "PRELOOP_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "PRELOOP_SMTP_FROM": "preloop@hub.bench",
        "PRELOOP_LOG_LEVEL": "warning",
    }
    hub = Hub(load_settings(env))
    await hub.start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        await hub.redis.client.delete("arq:queue")  # type: ignore[union-attr]
        org = await make_org("bench")
        await accounts.add_team(org.id, "oncall")
        tokens: list[str] = []
        for n in range(APPROVERS):
            user = await accounts.add_user(org.id, f"approver{n}@bench.test", role="approver")
            await accounts.add_member(org.id, "oncall", user["email"])
            token, _ = await accounts.create_key(org.id, user["id"], f"phone-{n}", scope="approver")
            tokens.append(token)
        app = create_app(hub=hub)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub.bench") as http:
            response = await http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
            assert response.status_code == 201, response.text
            for token in tokens:
                saved = await http.post(
                    "/api/v1/push/subscriptions", json=new_browser(push_origin).to_json(), headers=auth(token)
                )
                assert saved.status_code == 201, saved.text
            await http.get("/api/v1/push/vapid-public-key")  # the hub makes its VAPID keys on first start
            command = [str(Path(sys.executable).parent / "preloop"), "worker"]
            if os.environ.get("PRELOOP_BENCH_PROFILE"):
                command = [sys.executable, "-m", "cProfile", "-o", os.environ["PRELOOP_BENCH_PROFILE"], *command]
            # Popen returns at once (no wait): the worker runs beside this loop.
            worker = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL)  # noqa: ASYNC220
            while not await hub.redis.client.get("preloop:worker:heartbeat"):  # type: ignore[union-attr]
                assert worker.poll() is None, "the worker exited"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # let its startup sweeps finish
            cpu_before = _cpu_seconds(worker.pid)
            started = time.monotonic()
            created = await http.post(
                "/api/v1/approvals",
                json={"tool": "deploy", "server": "infra", "arguments": {"env": "prod"}},
                headers=auth(org.agent_token),
            )
            assert created.status_code == 201, created.text
            print(f"create answered after {time.monotonic() - started:.2f} s", file=sys.stderr)
            deadline = started + 120
            while len(arrivals.mail) < APPROVERS or len(arrivals.push) < APPROVERS:
                assert time.monotonic() < deadline, f"only {len(arrivals.mail)} mails, {len(arrivals.push)} pushes"
                await asyncio.sleep(0.01)
            worker_cpu = _cpu_seconds(worker.pid) - cpu_before
            email_last = max(arrivals.mail) - started
            push_last = max(arrivals.push) - started
            rows = await http.get(f"/api/v1/approvals/{created.json()['id']}/deliveries", headers=auth(org.admin_token))
            statuses = {d["status"] for d in rows.json()}
            if os.environ.get("PRELOOP_BENCH_DEBUG"):
                from collections import Counter

                errors = Counter(h["error"][:100] for d in rows.json() for h in d["history"] if h["error"])
                print("attempt errors:", errors.most_common(5), file=sys.stderr)
                print("attempts:", Counter(d["attempts"] for d in rows.json()), file=sys.stderr)
                print("history:", Counter(h["status"] for d in rows.json() for h in d["history"]), file=sys.stderr)
        print(
            f"{APPROVERS} approvers x (email + push) on {'postgresql' if pg else 'sqlite'}, worker in its own "
            f"process: first mail {min(arrivals.mail) - started:.2f} s, "
            f"first push {min(arrivals.push) - started:.2f} s; "
            f"delivery rows: {sorted(statuses)}; worker CPU {worker_cpu:.2f} s; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        print(f"RESULT email_last_s={email_last:.2f} push_last_s={push_last:.2f} approvers={APPROVERS}")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(15)
        await hub.stop()
        smtp.stop()
        pushes.shutdown()
        if pg:
            await drop_postgres(pg)


def _run_tree(root: Path) -> tuple[dict[str, float], str]:
    """One bench run of the tree at `root` in its own process: (its RESULT numbers and CPU, its summary)."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # the tree's own backend, for the bench and its worker
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "notify.py")], cwd=root, env=env, capture_output=True, text=True
    )
    out = done.stdout
    result = re.search(r"RESULT email_last_s=([\d.]+) push_last_s=([\d.]+)", out)
    if done.returncode != 0 or result is None:
        raise SystemExit(f"the bench of {root} failed:\n{out}\n{done.stderr[-3000:]}")
    cpu = re.search(r"worker CPU ([\d.]+) s", out)
    numbers = {"email": float(result[1]), "push": float(result[2]), "cpu": float(cpu[1]) if cpu else float("nan")}
    return numbers, out.strip().splitlines()[-2] if len(out.strip().splitlines()) > 1 else ""


def compare(baseline: str, rounds: int) -> None:
    """The bench of `baseline` and of this tree, alternately, `rounds` times; both and their ratio."""
    here = Path(__file__).resolve().parent.parent
    old = Path(tempfile.mkdtemp(prefix="preloop-bench-baseline-"))
    try:
        archive = subprocess.run(["git", "archive", baseline], cwd=here, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
        for n in range(rounds):
            for name, root in (("baseline", old), ("current", here)):
                load = os.getloadavg()[0]
                numbers, summary = _run_tree(root)
                runs[name].append(numbers)
                print(
                    f"round {n + 1} {name:8} email_last_s={numbers['email']:.2f} push_last_s={numbers['push']:.2f} "
                    f"worker_cpu_s={numbers['cpu']:.2f} load_before={load:.1f} | {summary}",
                    flush=True,
                )
        best = {name: {k: min(r[k] for r in rs) for k in ("email", "push", "cpu")} for name, rs in runs.items()}
        b, c = best["baseline"], best["current"]
        print(
            f"best of {rounds}: baseline ({baseline}) email {b['email']:.2f} s, push {b['push']:.2f} s, "
            f"worker CPU {b['cpu']:.2f} s; current email {c['email']:.2f} s, push {c['push']:.2f} s, "
            f"worker CPU {c['cpu']:.2f} s; current/baseline: email {c['email'] / b['email']:.2f}, "
            f"push {c['push'] / b['push']:.2f}, CPU {c['cpu'] / b['cpu']:.2f}; "
            f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        print(f"RESULT email_last_s={c['email']:.2f} push_last_s={c['push']:.2f} approvers={APPROVERS}")
    finally:
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline", metavar="REV", help="also run the bench of this git revision, alternately")
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline: how many runs of each")
    args = parser.parse_args()
    if args.baseline:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        compare(args.baseline, args.rounds)
    else:
        asyncio.run(main())
