"""Policy-as-code over HTTP: validate, apply, versions, diff, rollback, export, evaluate."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Schema
from litestar.params import Parameter

from backend import pagination
from backend.accounts.service import Principal
from backend.deps import admin_guard, people_guard
from backend.hub import Hub
from backend.openapi import error_response, media_types
from backend.policy_store import service
from backend.policy_store.schemas import (
    EvaluateBody,
    Evaluation,
    PolicyDiff,
    PolicyValidation,
    PolicyVersionView,
    RollbackBody,
    SeedApprovalPolicy,
    SeedTool,
    SourceBody,
)
from backend.request_checks import BODY_LIMIT_APPROVAL, BODY_LIMIT_POLICY

NO_POLICY = error_response(404, "No policy has been applied yet")
ANY_JSON = Schema()  # the policy's own JSON form (policies/schema.py)


def _active(version: dict[str, Any]) -> PolicyVersionView:
    return msgspec.convert(version, PolicyVersionView)


class PolicyController(Controller):
    path = "/api/v1"
    tags = ["policies"]

    @post("/policies/validate", operation_id="validate_policy", guards=[admin_guard], status_code=200,
          request_max_body_size=BODY_LIMIT_POLICY)
    async def validate(self, data: SourceBody, principal: Principal) -> PolicyValidation:
        policy = await service.compile_for_org(principal.org_id, data.source)
        warnings = await service.directory_warnings(principal.org_id, policy)
        return PolicyValidation(ok=True, sha256=policy.version_hash, warnings=list(warnings))

    @post("/policies", operation_id="apply_policy", guards=[admin_guard], status_code=201,
          request_max_body_size=BODY_LIMIT_POLICY,
          summary="Store a new immutable version and make it active")
    async def apply(self, data: SourceBody, principal: Principal, hub: Hub) -> PolicyVersionView:
        applied = await service.apply(
            principal.org_id, data.source, principal.actor, hub.bus, message=data.message, user_id=principal.user_id
        )
        return msgspec.convert(applied, PolicyVersionView)

    @get("/policies/versions", operation_id="list_policy_versions", guards=[people_guard],
         summary="Every applied version, newest first; pages by cursor", response_headers=pagination.HEADERS)
    async def versions(
        self, request: Request, principal: Principal,  # type: ignore[type-arg]
        limit: int = pagination.LIMIT, cursor: str | None = pagination.CURSOR,
    ) -> Response[list[PolicyVersionView]]:
        before = pagination.number(cursor) if cursor else None
        versions = await service.list_versions(principal.org_id, limit=limit, before=before)
        return pagination.page(request, versions, limit, list[PolicyVersionView], "version")  # type: ignore[no-any-return]

    @get("/policies/versions/{version:int}", operation_id="get_policy_version", guards=[people_guard])
    async def version(self, version: int, principal: Principal) -> PolicyVersionView:
        return msgspec.convert(await service.get_version(principal.org_id, version), PolicyVersionView)

    @get("/policies/active", operation_id="get_active_policy",
         summary="The active version; with after+wait, a long-poll for a newer one (304 on timeout)",
         responses={304: ResponseSpec(None, description="No version newer than `after` within `wait` seconds"),
                    404: NO_POLICY})
    async def active(
        self,
        principal: Principal,
        hub: Hub,
        after: int | None = Parameter(default=None, ge=0),
        wait: float = Parameter(default=0, ge=0, le=3600, description="seconds; capped by PRELOOP_MAX_WAIT_SECONDS"),
    ) -> Response[PolicyVersionView]:
        version = await service.active_after(hub, principal.org_id, after, wait)
        if version is None:
            return Response(content=None, status_code=304)  # type: ignore[arg-type]  # a 304 has no body
        return Response(_active(version))

    @post("/policies/diff", operation_id="diff_policy", guards=[admin_guard], status_code=200,
          request_max_body_size=BODY_LIMIT_POLICY)
    async def diff(self, data: SourceBody, principal: Principal) -> PolicyDiff:
        return msgspec.convert(await service.diff(principal.org_id, data.source), PolicyDiff)

    @post("/policies/rollback", operation_id="rollback_policy", guards=[admin_guard], status_code=201)
    async def rollback(self, data: RollbackBody, principal: Principal, hub: Hub) -> PolicyVersionView:
        rolled = await service.rollback(principal.org_id, data.version, principal.actor, hub.bus, principal.user_id)
        return msgspec.convert(rolled, PolicyVersionView)

    @get("/policies/export", operation_id="export_policy", guards=[people_guard], media_type=MediaType.TEXT,
         operation_class=media_types("application/yaml", MediaType.JSON, schema={MediaType.JSON: ANY_JSON}),
         responses={404: NO_POLICY},
         summary="The active policy's source as YAML (format=yaml) or its JSON form (format=json)")
    async def export(
        self, principal: Principal,
        format: str = Parameter(default="yaml", description="yaml or json; anything else is a 422"),
    ) -> Response[str]:
        text = await service.export(principal.org_id, format)
        media = "application/yaml" if format == "yaml" else MediaType.JSON
        return Response(text, media_type=media)

    @post("/evaluate", operation_id="evaluate_call", status_code=200, request_max_body_size=BODY_LIMIT_APPROVAL,
          summary="What the active policy decides for a call, and why")
    async def evaluate(self, data: EvaluateBody, principal: Principal) -> Evaluation:
        return msgspec.convert(await service.evaluate(
            principal, tool=data.tool, server=data.server, args=data.args,
            agent=msgspec.to_builtins(data.agent) if data.agent else None,
            justification=data.justification, at=data.at,
        ), Evaluation)


class SeedShapesController(Controller):
    """The active policy read back in the seed's JSON shapes (tool configuration, approval policy)."""

    path = "/api/v1"
    tags = ["policies"]

    @get("/tools", operation_id="list_tool_configurations")
    async def tools(self, principal: Principal) -> list[SeedTool]:
        return msgspec.convert(await service.seed_tools(principal.org_id), list[SeedTool])

    @get("/approval-policies", operation_id="list_approval_policies")
    async def approval_policies(self, principal: Principal) -> list[SeedApprovalPolicy]:
        return msgspec.convert(await service.seed_approval_policies(principal.org_id), list[SeedApprovalPolicy])
