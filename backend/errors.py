"""One error hierarchy: services raise these; the API maps them to HTTP, the CLI to exit codes."""

from __future__ import annotations

from typing import Any

import msgspec


class ErrorBody(msgspec.Struct):
    """What went wrong: `code` is stable and machine-readable, `message` says what to fix."""

    code: str
    message: str
    detail: Any
    """Structured context (the field, a hint); null when there is none."""
    status: int


class ErrorEnvelope(msgspec.Struct):
    """The one shape of every error answer of the API (4xx and 5xx)."""

    error: ErrorBody


class PreloopError(Exception):
    """Base of every expected error. `code` is stable and machine-readable."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, detail: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail, "status": self.status}}


class SettingsError(PreloopError):
    """A bad environment value; the message names the variable, the value and the fix."""

    code = "bad_setting"

    def __init__(self, variable: str, value: str, hint: str) -> None:
        super().__init__(f"{variable}={value!r}: {hint}", detail={"variable": variable, "value": value})
        self.variable = variable


class StartupError(PreloopError):
    """Something the hub needs at start is unavailable (database, Redis, port)."""

    code = "startup_failed"


class ValidationFailed(PreloopError):
    status = 422
    code = "validation_failed"


class NotAuthenticated(PreloopError):
    status = 401
    code = "not_authenticated"


class Forbidden(PreloopError):
    status = 403
    code = "forbidden"


class NotFound(PreloopError):
    status = 404
    code = "not_found"


class Conflict(PreloopError):
    status = 409
    code = "conflict"


class BadInput(PreloopError):
    """Input refused before any handler sees it: too deep, a NUL character, a wrong media type."""

    status = 400
    code = "invalid_input"


class UnsupportedMediaType(PreloopError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(PreloopError):
    """Too many failed attempts; `retry_after` seconds until the next one is heard (429 + Retry-After)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, detail: object = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = max(1, retry_after)
