"""A local Slack Web API (the real JSON wire format) and a hub whose Slack client talks to it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import pytest

from backend.settings import Settings, load_settings

BOT_TOKEN = "xoxb-test-bot-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0PRELOOP"
PUBLIC_URL = "http://127.0.0.1:8765"
"""The hub on loopback: Mattermost callbacks may then be plain http (a local trial)."""
MM_TOKEN = "mm-bot-token-0123456789"

USERS = {
    "UALICE": {"email": "alice@acme.test", "confirmed": True},
    "UBOB": {"email": "bob@acme.test", "confirmed": True},
    "UCAROL": {"email": "carol@acme.test", "confirmed": True},
    "UDEV": {"email": "dev@acme.test", "confirmed": True},
    "UMALLORY": {"email": "mallory@elsewhere.test", "confirmed": True},
    "UALICEALT": {"email": "alice@personal.test", "confirmed": True},  # Alice, under another email
    "UUNCONFIRMED": {"email": "alice@acme.test", "confirmed": False},
}


@dataclass
class SlackApi:
    """Every Web API call the hub made: (method, arguments); answers like Slack does."""

    url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    posts: int = 0

    def of(self, method: str) -> list[dict[str, Any]]:
        return [args for name, args in list(self.calls) if name == method]

    async def wait_for(self, method: str, count: int = 1, timeout: float = 20, **match: Any) -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            while True:
                found = [a for a in self.of(method) if all(a.get(k) == v for k, v in match.items())]
                if len(found) >= count:
                    return found
                await anyio.sleep(0.02)


@pytest.fixture
def slack_api() -> Iterator[SlackApi]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = SlackApi()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, args: dict[str, Any]) -> None:
            method = urlsplit(self.path).path.rsplit("/", 1)[-1]
            if self.headers.get("authorization") != f"Bearer {BOT_TOKEN}":
                self._answer({"ok": False, "error": "invalid_auth"})
                return
            with lock:
                state.calls.append((method, args))
                if method == "chat.postMessage":
                    state.posts += 1
                    ts = f"17000000{state.posts:02d}.000100"
                    self._answer({"ok": True, "channel": args["channel"], "ts": ts, "message": {"ts": ts}})
                elif method == "chat.update":
                    self._answer({"ok": True, "channel": args["channel"], "ts": args["ts"]})
                elif method == "chat.postEphemeral":
                    self._answer({"ok": True, "message_ts": "1700000099.000100"})
                elif method == "views.open":
                    self._answer({"ok": True, "view": {"id": "V0MODAL"}})
                elif method == "users.info":
                    user = USERS.get(str(args.get("user")))
                    if user is None:
                        self._answer({"ok": False, "error": "user_not_found"})
                    else:
                        self._answer(
                            {
                                "ok": True,
                                "user": {
                                    "id": args["user"],
                                    "is_bot": False,
                                    "deleted": False,
                                    "is_email_confirmed": user["confirmed"],
                                    "profile": {"email": user["email"]},
                                },
                            }
                        )
                else:
                    self._answer({"ok": False, "error": "unknown_method"})

        def do_GET(self) -> None:
            query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
            self._handle(query)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            if "json" in (self.headers.get("content-type") or ""):
                args = json.loads(raw or b"{}")
            else:
                args = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
            self._handle(args)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class MattermostApi:
    """A local Mattermost REST API v4: posts (create, update) and users."""

    url: str = ""
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    posts: int = 0

    def of(self, method: str, path: str) -> list[dict[str, Any]]:
        return [body for m, p, body in list(self.calls) if m == method and p == path]

    async def wait_for(self, method: str, path: str, count: int = 1, timeout: float = 20) -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            while len(self.of(method, path)) < count:
                await anyio.sleep(0.02)
        return self.of(method, path)


MM_USERS = {
    "mmalice": {"email": "alice@acme.test", "email_verified": True},
    "mmbob": {"email": "bob@acme.test", "email_verified": True},
    "mmcarol": {"email": "carol@acme.test", "email_verified": True},
}


@pytest.fixture
def mattermost_api() -> Iterator[MattermostApi]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = MattermostApi()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.loads(raw) if raw else {}
            if self.headers.get("authorization") != f"Bearer {MM_TOKEN}":
                self._answer(401, {"id": "api.context.session_expired.app_error", "status_code": 401})
                return
            with lock:
                state.calls.append((method, self.path, body))
                if method == "POST" and self.path == "/api/v4/posts":
                    state.posts += 1
                    self._answer(201, {**body, "id": f"post{state.posts:04d}", "create_at": 1700000000000})
                elif method == "POST" and self.path == "/api/v4/actions/dialogs/open":
                    self._answer(200, {"status": "OK"})
                elif method == "PUT" and self.path.startswith("/api/v4/posts/"):
                    self._answer(200, {**body, "id": self.path.rsplit("/", 1)[-1]})
                elif method == "GET" and self.path.startswith("/api/v4/users/"):
                    uid = self.path.rsplit("/", 1)[-1]
                    user = MM_USERS.get(uid)
                    if user is None:
                        self._answer(404, {"id": "app.user.missing_account.const", "status_code": 404})
                    else:
                        self._answer(200, {"id": uid, "username": uid, "delete_at": 0, **user})
                else:
                    self._answer(404, {"status_code": 404})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path, slack_api: SlackApi) -> Settings:
    return load_settings(
        {
            "PRELOOP_DATABASE_URL": database_url,
            "PRELOOP_REDIS_URL": redis_url,
            "PRELOOP_DATA_DIR": str(tmp_path / "data"),
            "PRELOOP_DEMO": "false",
            "PRELOOP_SECRET_KEY": "test-secret",
            "PRELOOP_SWEEP_SECONDS": "1",
            "PRELOOP_PUBLIC_URL": PUBLIC_URL,
            "PRELOOP_SLACK_API_URL": slack_api.url,
            "PRELOOP_NOTIFY_MAX_ATTEMPTS": "3",
            "PRELOOP_NOTIFY_BACKOFF_MS": "50",
            "PRELOOP_NOTIFY_BACKOFF_CAP_SECONDS": "1",
            "PRELOOP_NOTIFY_SEND_TIMEOUT_SECONDS": "5",
        }
    )


@pytest.fixture(autouse=True)
async def _empty_queue(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def signed(body: bytes, *, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Headers as Slack signs a request: v0 HMAC-SHA256 of `v0:{ts}:{raw body}`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={mac}"}


def click(request_id: str, action: str, user: str, *, ts: str = "1700000001.000100") -> bytes:
    """A block_actions interaction as Slack posts it: form-encoded `payload=<json>`."""
    payload = {
        "type": "block_actions",
        "team": {"id": "T0ACME", "domain": "acme"},
        "user": {"id": user, "username": user.lower(), "team_id": "T0ACME"},
        "api_app_id": "A0PRELOOP",
        "trigger_id": f"trigger-{user}-{action}",
        "channel": {"id": CHANNEL, "name": "approvals"},
        "container": {"type": "message", "message_ts": ts, "channel_id": CHANNEL},
        "message": {"ts": ts, "type": "message"},
        "response_url": "https://hooks.slack.invalid/actions/T0ACME/1/abc",
        "actions": [
            {
                "action_id": f"preloop_{action}",
                "block_id": "preloop_actions",
                "type": "button",
                "value": request_id,
                "action_ts": str(time.time()),
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def submission(request_id: str, user: str, reason: str) -> bytes:
    payload = {
        "type": "view_submission",
        "team": {"id": "T0ACME"},
        "user": {"id": user},
        "view": {
            "id": "V0MODAL",
            "callback_id": "preloop_decline",
            "private_metadata": request_id,
            "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
        },
    }
    return urlencode({"payload": json.dumps(payload)}).encode()
