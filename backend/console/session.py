"""Who is using the console: the session cookie, its CSRF token, and the viewer rule."""

from __future__ import annotations

import hashlib
import hmac

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from backend.accounts.service import Principal, principal_for_session
from backend.deps import SESSION_COOKIE
from backend.errors import Forbidden, NotAuthenticated
from backend.hub import Hub

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


def csrf_token(hub: Hub, session_token: str) -> str:
    """Bound to the session: a new login gets a new token, and nobody without the cookie can make one."""
    key = hub.settings.secret_key().encode()
    return hmac.new(key, b"console-csrf:" + session_token.encode(), hashlib.sha256).hexdigest()


def safe_next(target: str) -> str:
    """Only console paths: `next` must never send a signed-in person to another site."""
    return target if target.startswith("/console/") and not target.startswith("/console//") else "/console/approvals"


async def principal_of(connection: ASGIConnection) -> Principal:  # type: ignore[type-arg]
    principal = connection.scope["state"].get("principal")  # type: ignore[typeddict-item]
    if principal is None:
        raise NotAuthenticated("sign in to the console first")
    return principal  # type: ignore[no-any-return]


def refuse_viewer(principal: Principal) -> None:
    if principal.role == "viewer":
        raise Forbidden("viewers can see the console but not change anything", code="viewer_read_only")


async def signed_in(connection: ASGIConnection) -> bool:  # type: ignore[type-arg]
    """Whether the cookie is a live session (the sign-in page sends such visitors on)."""
    token = connection.cookies.get(SESSION_COOKIE, "")
    if not token:
        return False
    try:
        await principal_for_session(token)
    except NotAuthenticated:
        return False
    return True


async def session_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Console pages take the session cookie only (never a bearer key); POSTs must carry its CSRF token."""
    token = connection.cookies.get(SESSION_COOKIE, "")
    if not token:
        raise NotAuthenticated("sign in to the console first")
    principal = await principal_for_session(token)
    connection.scope["state"]["principal"] = principal  # type: ignore[typeddict-unknown-key]
    if connection.scope["method"] in ("GET", "HEAD"):  # type: ignore[typeddict-item]
        return
    sent = connection.headers.get(CSRF_HEADER)
    if sent is None:
        request: Request = Request(connection.scope, connection.receive)  # type: ignore[type-arg]
        sent = str((await request.form()).get(CSRF_FIELD, ""))
    if not hmac.compare_digest(sent, csrf_token(connection.app.state.hub, token)):
        raise Forbidden(
            "this form's CSRF token is missing or stale", code="csrf_failed",
            detail={"hint": "reload the page and submit again"},
        )
