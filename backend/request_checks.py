"""Checks every API request passes before its handler runs: same-site cookies, JSON bodies only,
bounded nesting, no NUL; and the security headers every response carries.

Size limits are per endpoint (`request_max_body_size` on the handlers, 413 beyond); the numbers
are in docs/security.md.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request
from litestar.types import Message, Scope

from backend.deps import SESSION_COOKIE
from backend.errors import BadInput, Forbidden, UnsupportedMediaType

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# No inline script anywhere; the approver app and the console load everything from the hub.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The API reference at /schema: Swagger UI sets inline style attributes; scripts still only load from
# the hub's own files, and nothing loads from elsewhere.
SCHEMA_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on its own form posts,
    # which the cross-site check must refuse; other sites still get no referrer.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}

MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays a request body may have (tool arguments included)."""

KB = 1024
BODY_LIMIT_DEFAULT = 64 * KB
BODY_LIMIT_SMALL = 16 * KB  # login, votes, cancel, claim: a few short fields
BODY_LIMIT_APPROVAL = 256 * KB  # a held call: tool, arguments, justification
BODY_LIMIT_POLICY = 512 * KB  # policy source (also capped after decoding, see policy_store)
BODY_LIMIT_CALLS = 4 * 1024 * KB  # up to 1000 call records from a gateway

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")


# Characters that reorder how text is displayed: a tool name holding them can show an approver
# one name while meaning another ("Trojan Source").
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def refuse_bidi(field: str, value: str) -> None:
    """Raise a 400 naming the field when `value` holds a bidirectional control character."""
    for position, char in enumerate(value):
        if char in BIDI_CONTROLS:
            raise BadInput(
                f"{field} contains the bidirectional control character U+{ord(char):04X} at position {position}",
                code="bidi_control",
                detail={"field": field, "position": position, "hint": "names must read the same as they display"},
            )


def too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text nests objects/arrays deeper than `limit` (strings are skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b'""', body).translate(None, _NOT_BRACKET)
    depth = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def nul_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first key or string holding a NUL character, else None."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where.replace("\x00", "\\u0000")
            if found := nul_field(item, where):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := nul_field(item, f"{path}[{index}]"):
                return found
    return None


def _refuse_nul(field: str, where: str) -> BadInput:
    return BadInput(
        f"{where} {field!r} contains a NUL character (\\u0000); remove it",
        code="nul_character",
        detail={"field": field, "hint": "text may not contain \\u0000"},
    )


def check_json_body(body: bytes, *, nul: bool = True) -> None:
    if too_deep(body):
        raise BadInput(
            f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels",
            code="too_deep",
            detail={"max_depth": MAX_JSON_DEPTH, "hint": "flatten the arguments"},
        )
    if nul and b"\\u0000" in body:
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return  # malformed JSON: the handler's decoder reports it
        if field := nul_field(decoded):
            raise _refuse_nul(field, "field")


_SECURITY_HEADER_ITEMS = tuple((name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items())
_CSP_VALUES = (CSP.encode(), SCHEMA_CSP.encode())


async def add_security_headers(message: Message, scope: Scope) -> None:
    """Litestar `before_send`: every response, errors and 404s included, gets the headers (those a
    handler set itself are kept). Appended to the message's raw header list: one pass over it, every
    response."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers") or ())
    present = {bytes(name).lower() for name, _ in headers}
    if b"content-security-policy" not in present:
        schema = str(scope.get("path", "")).startswith("/schema")
        headers.append((b"content-security-policy", _CSP_VALUES[schema]))
    headers.extend(item for item in _SECURITY_HEADER_ITEMS if item[0] not in present)
    message["headers"] = headers


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def check_same_site(request: Request) -> None:  # type: ignore[type-arg]
    """A state change authenticated by the session cookie must come from the hub's own pages.

    Browsers send `Origin` on every cross-site (and same-site fetch) POST; a missing or foreign
    origin is refused, so another site cannot ride an admin's cookie. API keys are not cookies
    and are not affected.
    """
    if request.method not in UNSAFE_METHODS or "authorization" in request.headers:
        return
    if SESSION_COOKIE not in request.cookies or request.route_handler.opt.get("ignores_session"):
        return  # signing in does not use the cookie a client may still hold
    # Fetch metadata: browsers set Sec-Fetch-Site themselves (pages cannot), and a service worker's own
    # fetch (the push Approve action) may carry no Origin at all.
    if request.headers.get("sec-fetch-site") == "same-origin":
        return
    origin = request.headers.get("origin") or _origin_of(request.headers.get("referer", ""))
    if origin and origin.lower() != "null":
        host = request.headers.get("host", "").lower()
        public = _origin_of(request.app.state.hub.settings.server.public_url)
        if urlsplit(origin.lower()).netloc == host or (public and origin.lower() == public):
            return
    raise Forbidden(
        "cross-site request refused: a signed-in change must come from the hub's own pages",
        code="csrf_failed",
        detail={"origin": origin or None, "hint": "send Origin matching the hub, or use an API key"},
    )


FORM_MEDIA = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
"""Bodies the routes marked `opt={"form_body": True}` accept besides JSON."""


async def check_request(request: Request) -> None:  # type: ignore[type-arg]
    """Litestar `before_request`: runs after guards, before the body is decoded for the handler."""
    check_same_site(request)
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in str(value):
            raise _refuse_nul(name.replace("\x00", "\\u0000"), "query parameter")
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise _refuse_nul(name, "path parameter")
    if request.method not in UNSAFE_METHODS:
        return
    body = await request.body()
    if not body:
        return
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media in FORM_MEDIA and request.route_handler.opt.get("form_body"):
        # The hub's own HTML forms (console, email-link confirmation pages): CSRF is checked above
        # for cookie sessions and by the form's own token or single-use link; NUL is still refused.
        if b"\x00" in body or b"%00" in body:
            raise _refuse_nul("form", "form field")
        return
    if media != "application/json":
        # Also what keeps cross-site HTML forms (form-encoded, multipart, text/plain) out.
        raise UnsupportedMediaType(
            f"this endpoint takes JSON, not {media or 'a body without a Content-Type'}",
            detail={"hint": "send the body as JSON with 'Content-Type: application/json'"},
        )
    # A route that answers per item (the gateway's call records) checks NUL itself, item by item,
    # so one bad record is refused alone instead of the whole batch.
    check_json_body(body, nul=not request.route_handler.opt.get("nul_per_item"))
