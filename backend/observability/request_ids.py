"""Request ids: taken from `X-Request-Id` when sane, else made up; carried in every log line of the request."""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar

HEADER = "x-request-id"
# Ids from proxies and gateways are echoed into logs and headers, so only a safe, short alphabet passes.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

current: ContextVar[str | None] = ContextVar("preloop_request_id", default=None)


def accept(raw: bytes | str | None) -> str:
    """The caller's id if it is a short token of safe characters, else a new one."""
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if raw and _ACCEPTABLE.fullmatch(raw):
        return raw
    return uuid.uuid4().hex


def _gateway_call_id() -> str | None:
    """The id of the tool call an embedded gateway is handling (looked up only if the gateway is loaded)."""
    api_client = sys.modules.get("mcp_gateway.api_client")
    return api_client.REQUEST_ID.get() if api_client is not None else None


class RequestIdFilter(logging.Filter):
    """Stamps `request_id` on records logged while a request (or an embedded gateway's call) is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = current.get() or _gateway_call_id()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


class TextFormatter(logging.Formatter):
    """The plain format, with ` [request_id]` appended when a request is being served."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [{rid}]" if rid else text
