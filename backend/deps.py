"""Request-scoped dependencies: who is calling, and the running hub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers.base import BaseRouteHandler

from backend.accounts import throttle
from backend.accounts.service import Principal, principal_for_session, principal_for_token
from backend.errors import Forbidden, NotAuthenticated
from backend.hub import Hub

SESSION_COOKIE = "preloop_session"


async def resolve_principal(request: Request) -> Principal:  # type: ignore[type-arg]
    cached = request.scope.get("state", {}).get("principal")  # type: ignore[call-overload]
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("Authorization header must be 'Bearer <api key>'")
        principal = await _checked(request, principal_for_token(token.strip()))
    elif cookie := request.cookies.get(SESSION_COOKIE):
        principal = await _checked(request, principal_for_session(cookie))
    else:
        raise NotAuthenticated(
            "authentication required", detail={"hint": "send 'Authorization: Bearer <api key>' or log in"}
        )
    request.state.principal = principal
    return principal


def client_address(request: Request) -> str:  # type: ignore[type-arg]
    return request.client.host if request.client else "unknown"


async def _checked(request: Request, lookup: Awaitable[Principal]) -> Principal:  # type: ignore[type-arg]
    """A wrong key or session counts against the caller's address; past the limit the answer is 429.

    Valid credentials cost nothing extra: the counter is only read after a failure.
    """
    try:
        return await lookup
    except NotAuthenticated:
        hub: Hub = request.app.state.hub
        if hub.redis is not None:
            address = client_address(request)
            await throttle.failed_credential(hub.redis.client, hub.settings.security, address)
            await throttle.check_address(hub.redis.client, hub.settings.security, address)
        raise


@asynccontextmanager
async def token_attempt(request: Request) -> AsyncIterator[None]:  # type: ignore[type-arg]
    """Count a refused token against the caller's address (see throttle.token_attempt)."""
    hub: Hub = request.app.state.hub
    if hub.redis is None:
        yield
        return
    async with throttle.token_attempt(hub.redis.client, hub.settings.security, client_address(request)):
        yield


def provide_hub(request: Request) -> Hub:  # type: ignore[type-arg]
    return request.app.state.hub  # type: ignore[no-any-return]


async def provide_principal(request: Request, hub: Hub) -> Principal:  # type: ignore[type-arg]
    """The `principal` dependency. It names `hub` so that Litestar resolves the two one after the other:
    dependencies of one level are resolved concurrently in an anyio task group, whose tasks cost more
    than both lookups (~3 % of the API's CPU per approval call)."""
    return await resolve_principal(request)


async def _principal_of(connection: ASGIConnection) -> Principal:  # type: ignore[type-arg]
    return await resolve_principal(connection)  # type: ignore[arg-type]


async def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    principal = await _principal_of(connection)
    if not principal.is_admin:
        raise Forbidden("this needs an admin (a session, or an admin-scoped key of an admin user)")


def session_cookie(hub: Hub, token: str) -> Cookie:
    """The login cookie every way of signing in sets."""
    return Cookie(
        key=SESSION_COOKIE, value=token, httponly=True, samesite="lax",
        secure=hub.settings.server.base_url.startswith("https"),
        max_age=hub.settings.security.session_hours * 3600,
    )


async def people_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Org data (people, keys, audit, history, live events) is for people, not agent keys."""
    principal = await _principal_of(connection)
    if principal.is_agent:
        raise Forbidden(
            "an agent key cannot read this; it creates requests and reads its own",
            code="agent_not_allowed",
        )


async def agent_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Approval requests come from agents: people decide them, they do not file them."""
    principal = await _principal_of(connection)
    if not principal.is_agent:
        raise Forbidden(
            "only agent keys create approval requests",
            code="agents_only",
            detail={"hint": "create an agent-scoped key (`preloop key create NAME`) for the agent"},
        )
