"""Health and identity endpoints."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Redirect

from backend.accounts.schemas import WhoAmI, WhoKey, WhoOrg, WhoUser
from backend.accounts.service import Principal
from backend.hub import Hub


class DatabaseHealth(msgspec.Struct):
    ok: bool
    kind: Literal["postgresql", "sqlite"] | msgspec.UnsetType = msgspec.UNSET
    error: str | msgspec.UnsetType = msgspec.UNSET
    """The first line of the error, when `ok` is false."""


class RedisHealth(msgspec.Struct):
    ok: bool
    embedded: bool | msgspec.UnsetType = msgspec.UNSET
    """Whether the hub runs its own embedded Redis (no PRELOOP_REDIS_URL)."""
    error: str | msgspec.UnsetType = msgspec.UNSET
    """The first line of the error, when `ok` is false."""


class WorkerHealth(msgspec.Struct):
    last_heartbeat: str | None
    """The worker's last heartbeat; null when no worker has beaten yet."""


class Health(msgspec.Struct):
    """`ok` when the database and Redis both answer (200), else `degraded` (503)."""

    status: Literal["ok", "degraded"]
    database: DatabaseHealth
    redis: RedisHealth
    worker: WorkerHealth | msgspec.UnsetType = msgspec.UNSET
    """Present when Redis answers."""


class SystemController(Controller):
    tags = ["system"]

    @get("/", operation_id="home", exclude_from_auth=True, include_in_schema=False)
    async def home(self) -> Redirect:
        return Redirect(path="/app/")

    @get("/health", operation_id="health", exclude_from_auth=True, summary="Database and Redis reachability",
         responses={503: ResponseSpec(Health, generate_examples=False, description="Database or Redis down")})
    async def health(self, hub: Hub) -> Response[Health]:
        report = msgspec.convert(await hub.health(), Health)
        return Response(report, status_code=200 if report.status == "ok" else 503)

    @get("/api/v1/me", operation_id="whoami", summary="Who this key or session is")
    async def me(self, principal: Principal) -> WhoAmI:
        return WhoAmI(
            user=WhoUser(id=str(principal.user_id), email=principal.email, role=principal.role),
            org=WhoOrg(id=str(principal.org_id)),
            via=principal.via,
            key=(
                WhoKey(id=str(principal.key_id), name=principal.key_name, scope=principal.scope,
                       labels=principal.labels)
                if principal.key_id
                else None
            ),
        )
