"""Real peers for notification tests: an SMTP server (aiosmtpd), a worker on the test's hub."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiosmtpd.controller import Controller

from backend.settings import Settings, load_settings
from tests.helpers import free_port
from workers.settings import build_worker


@dataclass
class Mailbox:
    """Everything the SMTP server accepted, parsed."""

    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self.arrived:
            self.messages.append(parsed)  # type: ignore[arg-type]
            self.arrived.notify_all()
        return "250 OK queued"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    async def wait_for(self, count: int, timeout: float = 20) -> list[EmailMessage]:
        with anyio.fail_after(timeout):
            while len(self.messages) < count:
                await anyio.sleep(0.02)
        return list(self.messages)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            box.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)

    controller = Controller(
        box, hostname="127.0.0.1", port=box.port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


EXTRA_ENV: dict[str, str] = {}


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path, mailbox: Mailbox) -> Settings:
    return load_settings(
        {
            "PRELOOP_DATABASE_URL": database_url,
            "PRELOOP_REDIS_URL": redis_url,
            "PRELOOP_DATA_DIR": str(tmp_path / "data"),
            "PRELOOP_DEMO": "false",
            "PRELOOP_SECRET_KEY": "test-secret",
            "PRELOOP_SWEEP_SECONDS": "1",
            "PRELOOP_PUBLIC_URL": "http://hub.test",
            "PRELOOP_SMTP_URL": f"smtp://127.0.0.1:{mailbox.port}",
            "PRELOOP_SMTP_FROM": "Preloop <preloop@hub.test>",
            "PRELOOP_NOTIFY_MAX_ATTEMPTS": "3",
            "PRELOOP_NOTIFY_BACKOFF_MS": "50",
            "PRELOOP_NOTIFY_BACKOFF_CAP_SECONDS": "1",
            "PRELOOP_NOTIFY_SEND_TIMEOUT_SECONDS": "5",
        }
    )


@asynccontextmanager
async def worker_running(hub: Any) -> AsyncIterator[Any]:
    """An arq worker on the test's hub (jobs + crons), stopped cleanly at the end."""
    worker = build_worker(hub.redis.arq_settings(), hub=hub)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await worker.close()


@pytest.fixture(autouse=True)
async def _empty_queue(redis_url: str) -> None:
    """Jobs left in this Redis DB by an earlier test belong to a database that no longer exists."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete("arq:queue")
    finally:
        await client.aclose()


@dataclass
class Receiver:
    """A real HTTP endpoint (its own thread) that records each POST and answers `status`."""

    url: str = ""
    status: int = 200
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            state.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
