"""Cursor pagination for the API's lists: an opaque `cursor` in, the next one out in a header.

Lists keep answering a JSON array (the CLI, the app and existing scripts read it as one); the cursor
of the next page travels in `X-Next-Cursor` and a `Link: <…>; rel="next"` header, and is absent on
the last page. A cursor names the last item seen, so a page never repeats or skips an item however
many new ones arrive meanwhile (offsets do).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import msgspec
from litestar import Request, Response
from litestar.datastructures import ResponseHeader
from litestar.params import Parameter

from backend.errors import ValidationFailed

NEXT_CURSOR = "X-Next-Cursor"
HEADERS = [
    ResponseHeader(
        name=NEXT_CURSOR, required=False, documentation_only=True,
        description="Pass as `cursor` for the next page; absent on the last page.",
    ),
    ResponseHeader(
        name="Link", required=False, documentation_only=True,
        description='The next page\'s URL as `<…>; rel="next"`; absent on the last page.',
    ),
]


LIMIT: Any = Parameter(default=100, ge=1, le=1000, description="Items per page")
CURSOR: Any = Parameter(default=None, max_length=200, description=f"The {NEXT_CURSOR} of the previous page")


def encode(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def decode(cursor: str, count: int) -> list[str]:
    """The cursor's parts; a 422 naming the parameter when it is not one this API handed out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    parts = text.split("|")
    if len(parts) != count or not all(parts):
        raise ValidationFailed(
            "cursor is not one this API handed out",
            detail={"field": "cursor", "hint": f"pass the {NEXT_CURSOR} header of the previous page as is"},
        )
    return parts


def position(cursor: str) -> tuple[datetime, UUID]:
    """A (created_at, id) cursor: the last item of a list ordered by time, ties broken by id."""
    at, item_id = decode(cursor, 2)
    try:
        return datetime.fromisoformat(at), UUID(item_id)
    except ValueError:
        decode("", 2)  # raises the cursor's 422
        raise


def number(cursor: str) -> int:
    """A cursor naming one non-negative integer (a sequence or version number)."""
    (text,) = decode(cursor, 1)
    if not text.isdigit() or len(text) > 16:
        decode("", 1)  # raises the cursor's 422
    return int(text)


def after_last(items: list[dict[str, Any]], limit: int, *fields: str) -> str | None:
    """The cursor after a full page's last item, made of its `fields`; None on a short page (the last)."""
    if not items or len(items) < limit:
        return None
    last = items[-1]
    return encode(*(last[f].isoformat() if isinstance(last[f], datetime) else str(last[f]) for f in fields))


def next_page_headers(request: Request[Any, Any, Any], cursor: str | None) -> dict[str, str]:
    if cursor is None:
        return {}
    query = {k: v for k, v in request.query_params.items() if k not in ("cursor", "offset")}
    url = f"{request.url.path}?{urlencode({**query, 'cursor': cursor})}"
    return {NEXT_CURSOR: cursor, "Link": f'<{url}>; rel="next"'}


def page(request: Request[Any, Any, Any], items: list[dict[str, Any]], limit: int, view: Any, *fields: str) -> Any:
    """One page as `view` (a list type), with the next page's headers when it is full; `fields` make the cursor."""
    following = after_last(items, limit, *fields)
    return Response(msgspec.convert(items, view), headers=next_page_headers(request, following))
