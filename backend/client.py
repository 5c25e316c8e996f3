"""A small client for the hub's REST API (httpx); its errors carry the CLI's documented exit codes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from backend.settings import ClientSettings

# Exit codes of every command that talks to the hub (docs/api.md lists them).
EXIT_OK = 0
EXIT_REFUSED = 1  # the hub answered with an error not covered below (5xx, 429, ...)
EXIT_USAGE = 2  # bad arguments or settings, including input the hub rejects as invalid (400/422)
EXIT_AUTH = 3  # no key, an unknown/revoked key (401) or a key not allowed to do this (403)
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5  # e.g. the request is already decided
EXIT_UNREACHABLE = 6  # nothing answered at PRELOOP_API_URL

_BY_STATUS = {400: EXIT_USAGE, 422: EXIT_USAGE, 401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_NOT_FOUND,
              409: EXIT_CONFLICT}


class ApiError(Exception):
    """One line saying what went wrong and what to fix, and the exit code for it."""

    def __init__(self, message: str, exit_code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status


def unreachable(settings: ClientSettings, exc: httpx.TransportError) -> ApiError:
    reason = str(exc) or type(exc).__name__
    return ApiError(
        f"cannot reach the hub at {settings.api_url} ({reason}); is `preloop serve` running there? "
        "Set PRELOOP_API_URL to the hub's address",
        EXIT_UNREACHABLE,
    )


def refused(settings: ClientSettings, response: httpx.Response) -> ApiError:
    """Turn the hub's `{"error": {...}}` envelope into one line with the right exit code."""
    code, message, hint = "", response.reason_phrase or "error", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or "")
        message = str(error.get("message") or message)
        detail = error.get("detail")
        if isinstance(detail, dict) and detail.get("hint"):
            hint = f" ({detail['hint']})"
    status = response.status_code
    what = f"the hub refused ({status}{' ' + code if code else ''}): {message}{hint}"
    if status == 401:
        return ApiError(f"{what}; set PRELOOP_API_KEY to a valid key "
                        "(`preloop key create --name NAME --scope approver`)", EXIT_AUTH, status)
    if status == 403:
        return ApiError(f"{what}; use a PRELOOP_API_KEY whose owner may do this", EXIT_AUTH, status)
    return ApiError(what, _BY_STATUS.get(status, EXIT_REFUSED), status)


class HubClient:
    """Synchronous on purpose: each CLI command is one request (or one stream) and then exits."""

    def __init__(self, settings: ClientSettings, *, timeout: float = 30.0) -> None:
        if not settings.api_key:
            raise ApiError(
                "PRELOOP_API_KEY is not set; create a key with `preloop key create --name NAME --scope approver` "
                "and export it",
                EXIT_AUTH,
            )
        self.settings = settings
        self._http = httpx.Client(
            base_url=settings.api_url,
            headers={"Authorization": f"Bearer {settings.api_key}", "User-Agent": "preloop-cli"},
            timeout=timeout,
        )

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None) -> Any:
        """Send one request; return the decoded JSON body or raise ApiError."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=clean, json=json)
        except httpx.TransportError as exc:
            raise unreachable(self.settings, exc) from None
        if response.is_error:
            raise refused(self.settings, response)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, path: str, *, params: Mapping[str, Any] | None = None,
               headers: Mapping[str, str] | None = None, timeout: float | None = None) -> Iterator[httpx.Response]:
        """A streamed GET; the response is checked before the caller reads it."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        extra: dict[str, Any] = {} if timeout is None else {"timeout": httpx.Timeout(10.0, read=timeout)}
        try:
            with self._http.stream("GET", path, params=clean, headers=dict(headers or {}), **extra) as response:
                if response.is_error:
                    response.read()
                    raise refused(self.settings, response)
                yield response
        except httpx.TransportError as exc:
            raise unreachable(self.settings, exc) from None
