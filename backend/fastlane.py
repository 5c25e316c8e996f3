"""The hub's fast lane: an agent's approval cycle (create, approve, claim, report) answered beside Litestar.

Litestar's work around a handler — routing, guards, dependency injection, the signature model, response
objects, the exception middleware — costs about as much CPU as the handler's own Python for these four
calls, which every held tool call makes. `FastLane` sits inside the app's ASGI handler (so Litestar's
`before_send` hooks still add the security headers, and `ObservedApp` still counts and ids the request) and
answers a request itself only when it is plain:

- `POST` to `/api/v1/approvals` or `/api/v1/approvals/<canonical uuid>/(approve|claim|outcome)`, no query string;
- `Authorization: Bearer <key>` of a known key (a create needs an agent's key, as the route's guard does);
- `Content-Type: application/json`, a body of known length within the lane's limit (below the route's), that
  passes the checks every request passes (`check_json_body`) and decodes strictly into the route's struct;
- an `Idempotency-Key`, if any, of 1-200 characters.

Then it calls the same functions the controllers call (`backend.approvals.controllers`). Anything else goes
to Litestar, the body replayed, before anything has happened: Litestar answers it exactly as it always did
(a wrong key is refused and throttled there, a bad body explained there). An error raised once the service
runs is answered by the app's own exception handlers, as Litestar would. `PRELOOP_API_FAST_PATH=0` sends
everything to Litestar.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from backend.accounts.service import Principal, principal_for_token
from backend.approvals import controllers, idempotency
from backend.approvals.schemas import ApproveBody, ClaimBody, CreateBody, OutcomeBody
from backend.asgi_body import replay, send_json
from backend.hub import Hub
from backend.request_checks import BODY_LIMIT_APPROVAL, BODY_LIMIT_SMALL, check_json_body

_PATH = re.compile(r"/api/v1/approvals(?:/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/([a-z]+))?")
_IDEMPOTENCY_KEY = idempotency.HEADER.lower().encode()

Call = Callable[[Hub, Principal, uuid.UUID | None, Any, str | None], Awaitable[tuple[int, msgspec.Struct]]]


async def _create(hub: Hub, principal: Principal, _: uuid.UUID | None, data: Any, key: str | None) -> Any:
    return await controllers.create_approval(hub, principal, data, key)


async def _approve(hub: Hub, principal: Principal, rid: uuid.UUID | None, data: Any, key: str | None) -> Any:
    assert rid is not None
    return 200, await controllers.approve_approval(hub, principal, rid, data, key)


async def _claim(hub: Hub, principal: Principal, rid: uuid.UUID | None, data: Any, _: str | None) -> Any:
    assert rid is not None
    return 200, await controllers.claim_approval(hub, principal, rid, data)


async def _report(hub: Hub, principal: Principal, rid: uuid.UUID | None, data: Any, _: str | None) -> Any:
    assert rid is not None
    return 200, await controllers.report_approval(hub, principal, rid, data)


@dataclass(frozen=True)
class Lane:
    """One route the lane takes: Litestar's route path (which must exist), the body's struct, the call."""

    path: str
    body: type[msgspec.Struct]
    limit: int
    call: Call
    agents_only: bool = False
    takes_idempotency_key: bool = False


LANES = {
    None: Lane("/api/v1/approvals", CreateBody, BODY_LIMIT_APPROVAL, _create, agents_only=True,
               takes_idempotency_key=True),
    "approve": Lane("/api/v1/approvals/{approval_id:uuid}/approve", ApproveBody, BODY_LIMIT_SMALL, _approve,
                    takes_idempotency_key=True),
    "claim": Lane("/api/v1/approvals/{approval_id:uuid}/claim", ClaimBody, BODY_LIMIT_SMALL, _claim),
    "outcome": Lane("/api/v1/approvals/{approval_id:uuid}/outcome", OutcomeBody, BODY_LIMIT_SMALL, _report),
}


class FastLane:
    """ASGI: answers the plain requests of an approval cycle itself, passes every other request to `app`."""

    def __init__(self, app: ASGIApp, litestar: Litestar, hub: Hub, *, enabled: bool = True) -> None:
        self.app = app
        self.litestar = litestar
        self.hub = hub
        self.enabled = enabled
        self.answered = 0
        """Requests the lane answered itself (the rest went to Litestar)."""
        self.decoders = {name: msgspec.json.Decoder(lane.body) for name, lane in LANES.items()}
        # The route template each lane answers for, as Litestar names it (metrics label requests by it).
        formats = {route.path: route.path_format for route in litestar.routes}
        missing = [lane.path for lane in LANES.values() if lane.path not in formats]
        if missing:
            raise RuntimeError(f"the fast lane's routes are not the app's: {missing}")
        self.templates = {name: formats[lane.path] for name, lane in LANES.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != ScopeType.HTTP or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        matched = _PATH.fullmatch(scope["path"])
        name = matched.group(2) if matched else None
        lane = LANES.get(name) if matched else None
        headers = _plain_headers(scope) if lane is not None else None
        if lane is None or headers is None or not 0 < headers.length <= lane.limit:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before sending its body
        settled = await self._settle(lane, name, matched, headers, body)
        if settled is None:
            await self.app(scope, replay(body, receive), send)
            return
        principal, rid, data = settled
        self.answered += 1
        scope["path_template"] = self.templates[name]
        scope.setdefault("state", {})["principal"] = principal
        try:
            status, answer = await lane.call(self.hub, principal, rid, data, headers.idempotency_key)
        except Exception as exc:
            await self._error(scope, receive, send, exc)
            return
        await send_json(send, status, msgspec.json.encode(answer))

    async def _settle(
        self, lane: Lane, name: str | None, matched: re.Match[str] | None, headers: _Headers, body: bytes
    ) -> tuple[Principal, uuid.UUID | None, Any] | None:
        """(caller, request id, decoded body) when the lane may answer; None to pass the request on."""
        if headers.idempotency_key is not None and not lane.takes_idempotency_key:
            return None  # this route takes no Idempotency-Key: Litestar's answer, whatever it is, stands
        if len(body) != headers.length:
            return None
        try:
            check_json_body(body)
            data = self.decoders[name].decode(body)
            principal = await principal_for_token(headers.token)
        except Exception:
            return None
        if lane.agents_only and not principal.is_agent:
            return None  # the route's guard refuses it
        rid = uuid.UUID(matched.group(1)) if matched is not None and matched.group(1) else None
        return principal, rid, data

    async def _error(self, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        """Answer `exc` with the handler the app registered for its class, as Litestar's middleware does."""
        handlers = self.litestar.exception_handlers
        handler = next((handlers[k] for k in type(exc).__mro__ if k in handlers), None)
        if handler is None:
            raise exc
        request: Request[Any, Any, Any] = Request(scope, receive)
        response = handler(request, exc)  # type: ignore[arg-type]
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Headers:
    token: str
    length: int
    idempotency_key: str | None


def _plain_headers(scope: Scope) -> _Headers | None:
    """The lane's view of a request's headers, or None when they are not plain enough for it."""
    token = length = key = None
    seen: set[bytes] = set()
    for name, value in scope["headers"]:
        if name in seen:
            return None  # a repeated header: Litestar decides what it means
        seen.add(name)
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            if scheme.lower() != b"bearer" or not rest.strip():
                return None
            token = rest.strip().decode("latin-1")
        elif name == b"content-type":
            if value.split(b";", 1)[0].strip().lower() != b"application/json":
                return None
        elif name == b"content-length":
            if not value.isdigit():
                return None
            length = int(value)
        elif name == _IDEMPOTENCY_KEY:
            key = value.decode("latin-1")
            if not 0 < len(key) <= idempotency.MAX_KEY_LENGTH:
                return None
        elif name in (b"transfer-encoding", b"expect"):
            return None
    if token is None or length is None or b"content-type" not in seen:
        return None
    return _Headers(token, length, key)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message: ReceiveMessage = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
