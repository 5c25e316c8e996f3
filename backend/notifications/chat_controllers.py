"""Chat callbacks (Slack interactivity and Events API) and a request's discussion."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post

from backend.accounts.service import Principal
from backend.hub import Hub
from backend.notifications import chat
from backend.notifications.schemas import Comment
from backend.request_checks import BODY_LIMIT_SMALL


def _headers(request: Request) -> dict[str, str]:  # type: ignore[type-arg]
    return {k.lower(): v for k, v in request.headers.items()}


def _json(answer: dict[str, Any] | None) -> Response[Any]:
    if answer is None:
        return Response(b"", status_code=200, media_type=MediaType.TEXT)
    return Response(answer, status_code=200, media_type=MediaType.JSON)


class SlackController(Controller):
    """Called by Slack, not by people: authenticated by the request signature, not a key or session."""

    path = "/api/v1/integrations/slack"
    tags = ["chat"]
    opt = {"form_body": True}  # Slack posts interactions form-encoded (payload=<json>)

    @post(
        "/interactions",
        operation_id="slack_interactions",
        status_code=200,
        request_max_body_size=4 * BODY_LIMIT_SMALL,
        summary="Slack interactivity: Approve/Decline clicks and the decline-reason modal (Slack-signed)",
    )
    async def interactions(self, request: Request, hub: Hub) -> Response[Any]:  # type: ignore[type-arg]
        body = await request.body()
        return _json(await chat.handle_slack_interaction(hub, _headers(request), body))

    @post(
        "/events",
        operation_id="slack_events",
        status_code=200,
        request_max_body_size=4 * BODY_LIMIT_SMALL,
        summary="Slack Events API: thread replies become the request's discussion (Slack-signed)",
    )
    async def events(self, request: Request, hub: Hub) -> Response[Any]:  # type: ignore[type-arg]
        body = await request.body()
        return _json(await chat.handle_slack_event(hub, _headers(request), body))


class CommentController(Controller):
    path = "/api/v1/approvals/{approval_id:uuid}/comments"
    tags = ["chat"]

    @get("", operation_id="list_approval_comments", summary="The request's discussion from its chat thread")
    async def list_comments(self, approval_id: UUID, principal: Principal) -> list[Comment]:
        return msgspec.convert(await chat.comments_of_request(principal, str(approval_id)), list[Comment])


CONTROLLERS = [SlackController, CommentController]


class MattermostController(Controller):
    """Called by Mattermost: each button carries its own single-use token (Mattermost signs nothing)."""

    path = "/api/v1/integrations/mattermost"
    tags = ["chat"]

    @post(
        "/actions",
        operation_id="mattermost_actions",
        status_code=200,
        request_max_body_size=BODY_LIMIT_SMALL,
        summary="Mattermost interactive message actions: Approve/Decline clicks (token-bound)",
    )
    async def actions(self, data: dict[str, Any], hub: Hub) -> dict[str, Any]:
        return await chat.handle_mattermost_action(hub, data)


CONTROLLERS.append(MattermostController)
