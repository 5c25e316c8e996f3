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


@dataclass
class PushService:
    """A local push service (RFC 8030 endpoint): records each push; `/gone/...` answers 410."""

    origin: str = ""
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@dataclass
class Browser:
    """One browser's push subscription: its private key decrypts what the hub sends."""

    endpoint: str
    private_key: Any
    auth_secret: bytes

    def to_json(self) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization

        from backend.notifications.push import b64url

        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(point), "auth": b64url(self.auth_secret)},
        }

    def decrypt(self, body: bytes) -> dict[str, Any]:
        import json

        import http_ece

        plain = http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth_secret, version="aes128gcm")
        return json.loads(plain)  # type: ignore[no-any-return]


def new_browser(push_origin: str, path: str = "push") -> Browser:
    import os
    import uuid as _uuid

    from cryptography.hazmat.primitives.asymmetric import ec

    return Browser(f"{push_origin}/{path}/{_uuid.uuid4().hex}", ec.generate_private_key(ec.SECP256R1()), os.urandom(16))


@pytest.fixture
def push_service() -> Iterator[PushService]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = PushService()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            state.calls.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(410 if self.path.startswith("/gone/") else 201)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.origin = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def check_vapid(authorization: str, public_key: str, audience: str) -> dict[str, Any]:
    """Verify a VAPID `Authorization` header (RFC 8292): ES256 JWT by `public_key`, aud, exp."""
    import base64
    import json
    import time

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid", authorization
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    assert fields["k"] == public_key
    head, claims, signature = fields["t"].split(".")
    assert json.loads(unb64(head)) == {"typ": "JWT", "alg": "ES256"}
    raw = unb64(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(public_key))
    key.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
    decoded: dict[str, Any] = json.loads(unb64(claims))
    assert decoded["aud"] == audience
    assert time.time() < decoded["exp"] <= time.time() + 24 * 3600
    assert decoded["sub"].startswith(("mailto:", "https://"))
    return decoded
