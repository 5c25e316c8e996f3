"""One request to N approvers on email + Web Push: time from creation to the last delivery accepted.

A real hub database (PostgreSQL when reachable, else SQLite) and Redis, a local SMTP server
(aiosmtpd) and a local push service (HTTP, RFC 8030 endpoints) in this process, and the worker as
its own process (`preloop worker`), as a deployment runs it. Every approver has one push
subscription with its own keys. Ends with
`RESULT email_last_s=X push_last_s=X approvers=N` (target: under 5 s each).
"""

from __future__ import annotations

import asyncio
import os
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
    await hub.start(with_worker=False)
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


if __name__ == "__main__":
    asyncio.run(main())
