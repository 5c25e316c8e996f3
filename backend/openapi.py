"""Write the hub's OpenAPI document (the one served at /schema/openapi.json) to a file: `make openapi`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.datastructures import MutableScopeHeaders
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, PathItem, Schema
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

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


def authenticated(handler: HTTPRouteHandler) -> bool:
    """Whether the operation needs a key or session (the `principal` dependency or a guard)."""
    return "principal" in handler.parsed_fn_signature.parameters or bool(handler.resolve_guards())


def error_statuses(handler: HTTPRouteHandler, path: str) -> set[int]:
    """The error statuses an operation can answer with, from what it is: its checks, path, body, caller."""
    statuses = {400, 503}  # every request's parameters are checked; every handler may need the database
    params = handler.parsed_fn_signature.parameters
    if authenticated(handler):
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


def settle_contract(app: Litestar) -> None:
    """Make the served document say what the app does, in the places Litestar cannot be told directly:

    - every operation documents the error envelope with the statuses it can answer (a handler's own
      `responses=`, e.g. the 503 of /health, win);
    - `OPTIONS` and `405` name every method of a path, also when its handlers sit in several routes;
    - operations that take no key or session say so (`security: []`);
    - bodies that refuse unknown fields say so (`additionalProperties: false`), and 204/304 carry no body.
    """
    routes = [route for route in app.routes if isinstance(route, HTTPRoute)]
    methods: dict[str, set[str]] = {}
    for route in routes:
        methods.setdefault(route.path, set()).update(route.methods)
    allowed = {path: ", ".join(sorted(names)) for path, names in methods.items()}
    # the router names a matched path by its template, with or without the parameter types
    allowed |= {route.path_format: allowed[route.path] for route in routes}
    app.state.allowed_methods = allowed
    for route in routes:
        for handler in route.route_handlers:
            if "OPTIONS" in handler.http_methods:
                continue
            own = dict(handler.responses or {})
            specs = {status: error_response(status) for status in sorted(error_statuses(handler, route.path))}
            handler.responses = {**specs, **own}
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.__class__ = _SettledOpenAPIPlugin  # Litestar builds its plugin itself; this one tidies its output


async def complete_allow(message: Message, scope: Scope) -> None:
    """Litestar `before_send`: an OPTIONS answer lists every method of the path. Litestar's own lists
    only the methods of the first controller route registered at that path."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    allowed = getattr(scope["app"].state, "allowed_methods", {}).get(scope.get("path_template", ""))
    if allowed:
        MutableScopeHeaders.from_message(message)["allow"] = allowed


class _SettledOpenAPIPlugin(OpenAPIPlugin):
    __slots__ = ()

    def _build_openapi(self) -> OpenAPI:
        doc = super()._build_openapi()
        public = {
            handler.operation_id
            for route in self.app.routes if isinstance(route, HTTPRoute)
            for handler in route.route_handlers
            if "OPTIONS" not in handler.http_methods and not authenticated(handler)
        }
        _close_strict_bodies(doc)
        for item in (doc.paths or {}).values():
            for operation in _operations(item):
                if operation.operation_id in public:
                    operation.security = []
                for status, response in (operation.responses or {}).items():
                    if status in {"204", "304"} and isinstance(response, OpenAPIResponse):
                        response.content = None
        return doc


def _operations(item: PathItem) -> list[Operation]:
    methods = (item.get, item.put, item.post, item.delete, item.options, item.head, item.patch, item.trace)
    return [operation for operation in methods if operation is not None]


def _strict_structs() -> dict[str, type[msgspec.Struct]]:
    found: dict[str, type[msgspec.Struct]] = {}
    pending = list(msgspec.Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__struct_config__.forbid_unknown_fields:
            found[cls.__name__] = cls
    return found


def _close_strict_bodies(doc: OpenAPI) -> None:
    strict = _strict_structs()
    schemas = doc.components.schemas if doc.components else None
    for name, schema in (schemas or {}).items():
        if isinstance(schema, Schema) and name.rsplit("_", 1)[-1] in strict:
            schema.additional_properties = False


def media_types(*media: str, schema: dict[str, Schema] | None = None) -> type[Operation]:
    """An operation whose success answer comes in any of `media` (chosen by a `format` parameter);
    Litestar documents one media type per handler."""

    @dataclass
    class AlternativeMedia(Operation):
        def __post_init__(self) -> None:
            success = next((r for s, r in (self.responses or {}).items() if s.startswith("2")), None)
            if isinstance(success, OpenAPIResponse):
                text = Schema(type=OpenAPIType.STRING)
                success.content = {m: OpenAPIMediaType(schema=(schema or {}).get(m, text)) for m in media}

    return AlternativeMedia
