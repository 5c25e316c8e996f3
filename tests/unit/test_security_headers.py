"""`add_security_headers` (Litestar before_send) on raw ASGI messages: what it adds and what it keeps."""

from __future__ import annotations

import asyncio
from typing import Any

from backend.request_checks import CSP, SCHEMA_CSP, SECURITY_HEADERS, add_security_headers


def _sent(path: str, headers: list[tuple[bytes, bytes]], kind: str = "http.response.start") -> dict[bytes, bytes]:
    message: dict[str, Any] = {"type": kind, "status": 200, "headers": headers}
    asyncio.run(add_security_headers(message, {"path": path}))  # type: ignore[arg-type]
    names = [name for name, _ in message["headers"]]
    assert len(names) == len(set(names)), names  # nothing twice
    return dict(message["headers"])


def test_every_response_gets_the_headers_and_the_csp_of_its_path() -> None:
    sent = _sent("/api/v1/me", [(b"content-type", b"application/json")])
    assert sent == {
        b"content-type": b"application/json",
        b"content-security-policy": CSP.encode(),
        **{name.encode(): value.encode() for name, value in SECURITY_HEADERS.items()},
    }
    assert _sent("/schema/swagger", [])[b"content-security-policy"] == SCHEMA_CSP.encode()


def test_headers_a_handler_set_are_kept() -> None:
    sent = _sent("/console", [(b"X-Frame-Options", b"SAMEORIGIN"), (b"content-security-policy", b"default-src 'none'")])
    assert sent[b"X-Frame-Options"] == b"SAMEORIGIN" and b"x-frame-options" not in sent
    assert sent[b"content-security-policy"] == b"default-src 'none'"
    assert sent[b"referrer-policy"] == b"same-origin"


def test_body_messages_are_left_alone() -> None:
    message: dict[str, Any] = {"type": "http.response.body", "body": b"{}"}
    asyncio.run(add_security_headers(message, {"path": "/"}))  # type: ignore[arg-type]
    assert message == {"type": "http.response.body", "body": b"{}"}
