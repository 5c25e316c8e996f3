"""The Litestar application: REST API, OpenAPI, console, PWA hosting, lifecycle of the hub."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router

from backend import db
from backend.accounts.agent_check import AgentController
from backend.accounts.controllers import AuthController, KeyController, MeController, TeamController, UserController
from backend.accounts.passkey_controllers import TotpController, WebAuthnController
from backend.approvals.autonomy_controllers import AutonomyController
from backend.approvals.controllers import CONTROLLERS as APPROVAL_CONTROLLERS
from backend.audit.controllers import AuditController
from backend.console import web as console
from backend.deps import provide_hub, provide_principal
from backend.errors import PreloopError, RateLimited
from backend.fastlane import FastLane
from backend.hub import Hub
from backend.notifications.chat_controllers import CONTROLLERS as CHAT_CONTROLLERS
from backend.notifications.controllers import CONTROLLERS as NOTIFICATION_CONTROLLERS
from backend.observability.asgi import ObservedApp
from backend.observability.controllers import ObservabilityController
from backend.openapi import complete_allow, settle_contract
from backend.policy_store.controllers import PolicyController, SeedShapesController
from backend.request_checks import BODY_LIMIT_DEFAULT, add_security_headers, check_request
from backend.settings import Settings, load_settings
from backend.system import SystemController
from workers.embedded import EmbeddedWorker

logger = logging.getLogger("preloop.api")
# The approver app is package data of `pwa`, so it is found the same way from a checkout or a wheel.
PWA_DIR = Path(str(importlib.resources.files("pwa")))
STATIC_DIR = Path(__file__).resolve().parent / "static"
API_AUTH_HELP = (
    "Approval hub and MCP firewall. Authenticate with `Authorization: Bearer <api key>` "
    "(create one with `preloop key create --name NAME --scope admin`, or `POST /api/v1/keys` once logged in), "
    "or with the session cookie that `POST /api/v1/auth/login` sets."
)


class _DocsPage(SwaggerRenderPlugin):
    """Swagger UI from package data, started by a script file: no CDN, and no inline script for the CSP."""

    BASE = "/static/swagger-ui"

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:  # type: ignore[type-arg]
        base = self.BASE
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{openapi_schema['info']['title']} API</title>"
            "<link rel='icon' type='image/svg+xml' href='/app/icon.svg'>"
            f"<link rel='stylesheet' href='{base}/swagger-ui.css'><link rel='stylesheet' href='{base}/preloop.css'>"
            "</head><body><div id='swagger-container'></div>"
            f"<script src='{base}/swagger-ui-bundle.js'></script>"
            f"<script src='{base}/swagger-ui-standalone-preset.js'></script>"
            f"<script src='{base}/preloop-init.js'></script></body></html>"
        ).encode()


def _docs_page() -> SwaggerRenderPlugin:
    """The API reference page; its scripts and styles are package data, so it works with no network."""
    return _DocsPage(path="/")


def _error(status: int, code: str, message: str, detail: Any = None) -> Response[dict[str, Any]]:
    return Response(
        {"error": {"code": code, "message": message, "detail": detail, "status": status}}, status_code=status
    )


def _preloop_error(_: Request, exc: PreloopError) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    response = _error(exc.status, exc.code, exc.message, exc.detail)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _validation_error(_: Request, exc: ValidationException) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    return _error(400, "invalid_input", str(exc.detail), exc.extra)


def _http_error(_: Request, exc: HTTPException) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    codes = {
        404: "not_found",
        405: "method_not_allowed",
        401: "not_authenticated",
        403: "forbidden",
        413: "body_too_large",
        429: "rate_limited",
    }
    response = _error(
        exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.extra or None
    )
    for name, value in (exc.headers or {}).items():  # 405 names the methods the path takes (Allow)
        response.headers[name] = value
    return response


def _unexpected(request: Request, exc: Exception) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    if db.is_unreachable(exc):
        logger.warning("database unreachable", extra={"path": request.url.path, "error": db.describe(exc)})
        response = _error(
            503,
            "database_unavailable",
            "the hub cannot reach its database right now; nothing was changed, retry shortly",
            {"retry_after": db.RETRY_AFTER_SECONDS},
        )
        response.headers["Retry-After"] = str(db.RETRY_AFTER_SECONDS)
        return response
    logger.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return _error(500, "internal_error", "the hub hit an unexpected error; it is logged")


def route_handlers() -> list[Any]:
    handlers: list[Any] = [
        SystemController,
        AuthController,
        MeController,
        UserController,
        TeamController,
        KeyController,
        AgentController,
        AuditController,
    ]
    handlers.extend([WebAuthnController, TotpController])
    handlers.extend([PolicyController, SeedShapesController, AutonomyController])
    handlers.append(ObservabilityController)
    handlers.extend(APPROVAL_CONTROLLERS)
    handlers.extend(console.route_handlers())
    handlers.append(create_static_files_router(path="/static", directories=[STATIC_DIR], name="static"))
    handlers.extend(NOTIFICATION_CONTROLLERS)
    handlers.extend(CHAT_CONTROLLERS)
    if PWA_DIR.is_dir():
        handlers.append(create_static_files_router(path="/app", directories=[PWA_DIR], html_mode=True, name="pwa"))
    return handlers


def create_app(settings: Settings | None = None, *, with_worker: bool = True, hub: Hub | None = None) -> Litestar:
    """Build the app. With `hub` given, the caller has started it and owns its lifecycle."""
    settings = settings or (hub.settings if hub else load_settings())
    owns_hub = hub is None
    running = hub or Hub(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not owns_hub:
            yield
            return
        await running.start()
        worker = await EmbeddedWorker(running).start() if with_worker else None
        if settings.demo.enabled:
            from backend.demo import box, ensure_demo, login_lines

            created = await ensure_demo(running)
            if created is not None:
                key_file = settings.server.data_dir / "demo-agent.key"
                print(box("Preloop demo created", login_lines(created, key_file)), flush=True)
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await running.stop()

    app = Litestar(
        route_handlers=route_handlers(),
        dependencies={"principal": Provide(provide_principal), "hub": Provide(provide_hub, sync_to_thread=False)},
        exception_handlers={
            PreloopError: _preloop_error,
            ValidationException: _validation_error,
            NotFoundException: _http_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="Preloop",
            version="0.1.0",
            description=API_AUTH_HELP,
            path="/schema",
            render_plugins=[_docs_page()],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="pl_… API key")}
            ),
            security=[{"bearer": []}],
        ),
        lifespan=[lifespan],
        template_config=console.template_config(),
        before_request=check_request,
        before_send=[add_security_headers, complete_allow],
        request_max_body_size=BODY_LIMIT_DEFAULT,
        debug=False,
        logging_config=None,
    )
    settle_contract(app)
    app.state.hub = running
    # Outside routing, so every request (404s included) gets an id and is counted.
    app.asgi_handler = ObservedApp(FastLane(app.asgi_handler, app, running, enabled=settings.server.fast_path))
    return app
