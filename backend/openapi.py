"""Write the hub's OpenAPI document (the one served at /schema/openapi.json) to a file: `make openapi`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.routes import HTTPRoute

from backend.errors import ErrorEnvelope
from backend.settings import load_settings

DEFAULT_PATH = Path("docs/openapi.json")


def document() -> dict[str, Any]:
    """The document as the app serves it; building the app connects to nothing."""
    from backend.app import create_app

    app = create_app(load_settings({}), with_worker=False)
    return app.openapi_schema.to_schema()


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.write_text(render(document()))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- the error answers every operation documents --------------------------------------------------

ERROR_DESCRIPTIONS = {
    400: "Malformed input: a body or parameter that does not decode or validate "
    "(codes invalid_input, too_deep, nul_character, bidi_control)",
    401: "No credentials, or an unknown, expired or revoked key, session or signature",
    403: "The caller may not do this: role, key scope, or a cookie-signed change from another site",
    404: "No such object in the caller's organization",
    409: "The object's state forbids it (already decided, claimed, exists), "
    "or an Idempotency-Key reused with a different body",
    413: "The body is larger than this operation's limit",
    415: "The body is not JSON",
    422: "Well-formed input that a rule refuses; `detail.field` names the field",
    429: "Too many attempts from this caller; `Retry-After` says when to try again",
    503: "The database is unreachable; nothing was changed; `Retry-After` says when to try again",
}
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def error_statuses(handler: HTTPRouteHandler, path: str) -> set[int]:
    """The error statuses an operation can answer with, from what it is: its checks, path, body, caller."""
    statuses = {400, 503}  # every request's parameters are checked; every handler may need the database
    params = handler.parsed_fn_signature.parameters
    if "principal" in params or handler.resolve_guards():
        statuses |= {401, 403, 429}  # a wrong credential counts towards the caller's limit
    if "{" in path:
        statuses.add(404)
    if set(handler.http_methods) & UNSAFE:
        # a body is checked (size, media type, rules); a signed-in cookie change may be cross-site;
        # sign-in, invite and token routes refuse wrong secrets and count them.
        statuses |= {401, 403, 404, 409, 413, 415, 422, 429}
    elif len(params) > len({"principal", "hub", "request"} & set(params)) + path.count("{"):
        statuses.add(422)  # query values a service refuses (an unknown status, a bad date)
    return statuses


def error_response(status: int, description: str | None = None) -> ResponseSpec:
    """The error envelope as the documented answer for `status`."""
    return ResponseSpec(
        data_container=ErrorEnvelope, generate_examples=False,
        description=description or ERROR_DESCRIPTIONS[status],
    )


def document_errors(app: Litestar) -> None:
    """Put the one error envelope on every operation, with the statuses it can answer; the app's own
    extra answers (`responses=` on a handler, e.g. the 503 of /health) win."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            own = dict(handler.responses or {})
            specs = {status: error_response(status) for status in sorted(error_statuses(handler, route.path))}
            handler.responses = {**specs, **own}


def media_types(*media: str, schema: Schema | None = None) -> type[Operation]:
    """An operation whose success answer comes in any of `media` (chosen by a `format` parameter);
    Litestar documents one media type per handler."""

    @dataclass
    class AlternativeMedia(Operation):
        def __post_init__(self) -> None:
            success = next((r for s, r in (self.responses or {}).items() if s.startswith("2")), None)
            if isinstance(success, OpenAPIResponse):
                body = schema or Schema(type=OpenAPIType.STRING)
                success.content = {m: OpenAPIMediaType(schema=body) for m in media}

    return AlternativeMedia
