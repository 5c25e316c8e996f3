"""REST for approval requests and grants; every handler hands off to the service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import HeaderParameter, Parameter, QueryParameter
from litestar.response import Stream

from backend import pagination
from backend.accounts.passkey_schemas import BatchStepUpBody, StepUpBody, StepUpOptions
from backend.accounts.service import Principal
from backend.approvals import grants, history, idempotency, presentation, service, waiting
from backend.approvals.schemas import (
    Approval,
    ApproveBody,
    BatchBody,
    BatchItem,
    BatchResult,
    CancelBody,
    ClaimBody,
    CreateBody,
    Decisions,
    DeclineBody,
    Granted,
    GrantView,
    HistoryFilter,
    Outcome,
    OutcomeBody,
    RevokeBody,
    WaitBody,
)
from backend.deps import agent_guard, people_guard
from backend.event_stream import EventsController
from backend.hub import Hub
from backend.openapi import media_types
from backend.request_checks import BODY_LIMIT_APPROVAL

# One stream, two encodings: JSON is an array of flat records; CSV is text with the same columns.
EXPORT_SCHEMA = {
    MediaType.JSON: Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
    "text/csv": Schema(type=OpenAPIType.STRING),
}


IDEMPOTENCY_KEY: Any = HeaderParameter(
    name=idempotency.HEADER, default=None, min_length=1, max_length=idempotency.MAX_KEY_LENGTH,
    description="Send the same key when retrying: the retry gets the first answer (for 24 h), not a second "
    "effect. The same key with a different body is a 409 (idempotency_key_reused).",
)


async def _vote_once(
    principal: Principal, decision: str, approval_id: UUID, key: str | None, body: Any,
    run: Callable[[], Awaitable[tuple[int, Any]]],
) -> Any:
    """A vote's answer, once per Idempotency-Key; the request id is part of what the key stands for."""
    request = {"approval_id": str(approval_id), "body": body}
    _, answer = await idempotency.once(principal, f"{decision}_approval", key, request, run)
    return answer


# The history's filters, read from the query string once (each field a query parameter) and passed through.
HISTORY_FILTER = {"filters": Provide(HistoryFilter, sync_to_thread=False)}


def _approval(item: dict[str, Any]) -> Approval:
    return msgspec.convert(item, Approval)


def _approvals(items: list[dict[str, Any]]) -> list[Approval]:
    return msgspec.convert(items, list[Approval])


def _decisions(answer: dict[str, Any]) -> Decisions:
    return msgspec.convert(answer, Decisions)


# An agent's approval cycle: what the four handlers below do, also called by `backend.fastlane`.


async def create_approval(
    hub: Hub, principal: Principal, data: CreateBody, idempotency_key: str | None
) -> tuple[int, Approval | Granted]:
    """(201 new / 200 attached or granted, the answer) of `POST /api/v1/approvals`."""

    async def run() -> tuple[int, Any]:
        return await service.create_request(
            hub,
            principal,
            tool=data.tool,
            server=data.server,
            arguments=data.arguments,
            hash_hex=data.arguments_hash,
            justification=data.justification,
            input_schema=data.input_schema,
        )

    status, body = await idempotency.once(principal, "create_approval", idempotency_key, data, run)
    return status, msgspec.convert(body, Granted) if body.get("status") == "granted" else _approval(body)


async def approve_approval(
    hub: Hub, principal: Principal, approval_id: UUID, body: ApproveBody, idempotency_key: str | None
) -> Approval:
    async def run() -> tuple[int, Any]:
        return 200, await service.vote(
            hub,
            principal,
            approval_id,
            "approve",
            reason=body.reason,
            grant_seconds=body.grant_seconds,
            channel=principal.channel,
            assertion=body.assertion,
        )

    return _approval(await _vote_once(principal, "approve", approval_id, idempotency_key, body, run))


async def claim_approval(hub: Hub, principal: Principal, approval_id: UUID, data: ClaimBody) -> Approval:
    return _approval(await service.claim(hub, principal, approval_id, data.arguments_hash))


async def report_approval(hub: Hub, principal: Principal, approval_id: UUID, data: OutcomeBody) -> Approval:
    return _approval(await service.report_outcome(
        hub,
        principal,
        approval_id,
        success=data.success,
        result_summary=data.result_summary,
        error=data.error,
    ))


class ApprovalController(Controller):
    path = "/api/v1/approvals"
    tags = ["approvals"]

    @post(
        "",
        operation_id="create_approval",
        guards=[agent_guard],
        request_max_body_size=BODY_LIMIT_APPROVAL,
        summary="Hold a call for approval (201 new, 200 attached or granted)",
        responses={200: ResponseSpec(
            Approval | Granted, generate_examples=False,  # type: ignore[arg-type]
            description="The same call was pending (attached: true), or a grant covers it (status: granted)",
        )},
    )
    async def create(
        self, data: CreateBody, principal: Principal, hub: Hub, idempotency_key: str | None = IDEMPOTENCY_KEY
    ) -> Response[Approval]:
        status, answer = await create_approval(hub, principal, data, idempotency_key)
        return Response(answer, status_code=status)  # type: ignore[arg-type]

    @get("", operation_id="list_approvals", summary="History, newest first, filtered; pages by cursor",
         response_headers=pagination.HEADERS, dependencies=HISTORY_FILTER)
    async def list_requests(
        self,
        request: Request,  # type: ignore[type-arg]
        principal: Principal,
        filters: HistoryFilter,
        inbox_scope: str = QueryParameter(  # type: ignore[assignment]
            name="scope", default="mine",
            description="With status=pending: mine (what you can vote on) or all (every pending)",
        ),
        limit: int = pagination.LIMIT,
        offset: int = Parameter(default=0, ge=0),
        cursor: str | None = pagination.CURSOR,
    ) -> Response[list[Approval]]:
        items = await history.list_requests(
            principal,
            filters,
            scope=inbox_scope,
            limit=limit,
            offset=offset,
            before=pagination.position(cursor) if cursor else None,
        )
        following = pagination.after_last(items, limit, "created_at", "id")
        return Response(_approvals(items), headers=pagination.next_page_headers(request, following))

    @get(
        "/export", operation_id="export_approvals", guards=[people_guard],
        operation_class=media_types(MediaType.JSON, "text/csv", schema=EXPORT_SCHEMA),
        summary="Stream the filtered history as CSV or JSON", dependencies=HISTORY_FILTER,
    )
    async def export(
        self,
        principal: Principal,
        filters: HistoryFilter,
        format: str = Parameter(default="json", description="json or csv; anything else is a 422"),
    ) -> Stream:
        chunks = await history.export(principal, format, filters)
        media = "text/csv; charset=utf-8" if format == "csv" else MediaType.JSON
        return Stream(
            chunks,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="approvals.{format}"'},
        )

    @get("/wait", operation_id="wait_for_approvals", summary="Long-poll until any listed request is decided")
    async def wait(
        self,
        principal: Principal,
        hub: Hub,
        ids: str,
        seconds: float = QueryParameter(name="timeout", default=25.0, ge=0, le=3600),  # type: ignore[assignment]
    ) -> Decisions:
        return _decisions(await waiting.wait_for_decisions(hub, principal, waiting.parse_ids(ids), seconds))

    @post(
        "/wait",
        operation_id="wait_for_approvals_post",
        request_max_body_size=BODY_LIMIT_APPROVAL,  # up to 5000 ids
        status_code=200,
        summary="The same long-poll with the ids in the body (for long id lists)",
    )
    async def wait_post(self, data: WaitBody, principal: Principal, hub: Hub) -> Decisions:
        return _decisions(await waiting.wait_for_decisions(hub, principal, waiting.parse_ids(data.ids), data.timeout))

    @post(
        "/batch",
        operation_id="decide_approvals",
        status_code=200,
        summary="Approve or decline several requests; each is its own checked vote",
    )
    async def batch(
        self, data: BatchBody, principal: Principal, hub: Hub, idempotency_key: str | None = IDEMPOTENCY_KEY
    ) -> BatchResult:
        async def run() -> tuple[int, Any]:
            return 200, await service.vote_many(
                hub,
                principal,
                data.ids,
                data.decision,
                reason=data.reason,
                grant_seconds=data.grant_seconds,
                channel=principal.channel,
                assertion=data.assertion,
            )

        _, results = await idempotency.once(principal, "decide_approvals", idempotency_key, data, run)
        ok = sum(1 for r in results if r["ok"])
        return BatchResult(results=msgspec.convert(results, list[BatchItem]), ok=ok, failed=len(results) - ok)

    @post(
        "/batch/step-up/options",
        operation_id="batch_step_up_options",
        status_code=200,
        summary="One passkey challenge covering several requests (ids and argument hashes) and a decision",
    )
    async def batch_step_up(
        self, data: BatchStepUpBody, request: Request, principal: Principal, hub: Hub  # type: ignore[type-arg]
    ) -> StepUpOptions:
        origin = hub.settings.server.web_origin(str(request.base_url))
        options = await service.step_up_options(hub, principal, data.ids, data.decision, origin)
        return msgspec.convert(options, StepUpOptions)

    @post(
        "/{approval_id:uuid}/step-up/options",
        operation_id="step_up_options",
        status_code=200,
        summary="A passkey challenge derived from this request, the decision and the arguments hash",
    )
    async def step_up(
        self, approval_id: UUID, data: StepUpBody, request: Request, principal: Principal, hub: Hub  # type: ignore[type-arg]
    ) -> StepUpOptions:
        origin = hub.settings.server.web_origin(str(request.base_url))
        options = await service.step_up_options(hub, principal, [str(approval_id)], data.decision, origin)
        return msgspec.convert(options, StepUpOptions)

    @get("/{approval_id:uuid}", operation_id="get_approval")
    async def get_request(self, approval_id: UUID, principal: Principal) -> Approval:
        return msgspec.convert(await presentation.get_request(principal, approval_id), Approval)

    @get(
        "/{approval_id:uuid}/outcome",
        operation_id="get_approval_outcome",
        summary="Machine-readable verdict: kind approved/declined/expired/cancelled, by, reason",
    )
    async def outcome(self, approval_id: UUID, principal: Principal) -> Outcome:
        item = await presentation.get_request(principal, approval_id, with_flags=False)
        return Outcome(id=item["id"], status=item["status"], outcome=item["outcome"], execution=item["execution"])

    @post("/{approval_id:uuid}/approve", operation_id="approve_approval", status_code=200)
    async def approve(
        self, approval_id: UUID, principal: Principal, hub: Hub, data: ApproveBody | None = None,
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> Approval:
        return await approve_approval(hub, principal, approval_id, data or ApproveBody(), idempotency_key)

    @post("/{approval_id:uuid}/decline", operation_id="decline_approval", status_code=200)
    async def decline(
        self, approval_id: UUID, principal: Principal, hub: Hub, data: DeclineBody | None = None,
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> Approval:
        body = data or DeclineBody()

        async def run() -> tuple[int, Any]:
            return 200, await service.vote(
                hub, principal, approval_id, "decline", reason=body.reason, channel=principal.channel,
                assertion=body.assertion,
            )

        return _approval(await _vote_once(principal, "decline", approval_id, idempotency_key, body, run))

    @post("/{approval_id:uuid}/cancel", operation_id="cancel_approval", status_code=200)
    async def cancel(
        self, approval_id: UUID, principal: Principal, hub: Hub, data: CancelBody | None = None
    ) -> Approval:
        return _approval(await service.cancel(hub, principal, approval_id, (data or CancelBody()).reason))

    @post(
        "/{approval_id:uuid}/claim",
        operation_id="claim_approval",
        status_code=200,
        summary="Start running an approved call, once; the arguments hash must match",
    )
    async def claim(
        self, approval_id: UUID, data: ClaimBody, principal: Principal, hub: Hub
    ) -> Approval:
        return await claim_approval(hub, principal, approval_id, data)

    @post("/{approval_id:uuid}/outcome", operation_id="report_approval_outcome", status_code=200)
    async def report(
        self, approval_id: UUID, data: OutcomeBody, principal: Principal, hub: Hub
    ) -> Approval:
        return await report_approval(hub, principal, approval_id, data)


class GrantController(Controller):
    path = "/api/v1/grants"
    tags = ["approvals"]
    guards = [people_guard]

    @get("", operation_id="list_grants", summary="Time-boxed grants, newest first; pages by cursor",
         response_headers=pagination.HEADERS)
    async def list_grants(
        self, request: Request, principal: Principal, active: bool | None = None,  # type: ignore[type-arg]
        limit: int = pagination.LIMIT, cursor: str | None = pagination.CURSOR,
    ) -> Response[list[GrantView]]:
        before = pagination.position(cursor) if cursor else None
        items = await grants.list_grants(principal, active=active, limit=limit, before=before)
        return pagination.page(request, items, limit, list[GrantView], "created_at", "id")  # type: ignore[no-any-return]

    @post("/{grant_id:uuid}/revoke", operation_id="revoke_grant", status_code=200)
    async def revoke(
        self, grant_id: UUID, principal: Principal, hub: Hub, data: RevokeBody | None = None
    ) -> GrantView:
        revoked = await grants.revoke_grant(hub, principal, grant_id, (data or RevokeBody()).reason)
        return msgspec.convert(revoked, GrantView)


CONTROLLERS = [ApprovalController, GrantController, EventsController]
