"""Chat callbacks (Slack interactivity and Events API) and a request's discussion."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, MediaType, Request, Response, delete, get, post

from backend.accounts.service import Principal
from backend.deps import token_attempt
from backend.hub import Hub
from backend.notifications import chat, chat_links
from backend.notifications.schemas import Comment, MattermostActionAnswer, MattermostDialogAnswer, NewComment
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

    @post(
        "",
        operation_id="add_approval_comment",
        status_code=201,
        request_max_body_size=BODY_LIMIT_SMALL,
        summary="Add a comment to the request's discussion (approvers and admins; not viewers, not agent keys)",
    )
    async def add_comment(self, approval_id: UUID, data: NewComment, principal: Principal, hub: Hub) -> Comment:
        source = "app" if principal.via == "session" else "api"
        added = await chat.add_comment(hub, principal, str(approval_id), data.text, source=source)
        return msgspec.convert(added, Comment)


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
    async def actions(self, data: dict[str, Any], hub: Hub) -> MattermostActionAnswer:
        return msgspec.convert(await chat.handle_mattermost_action(hub, data), MattermostActionAnswer)

    @post(
        "/dialogs",
        operation_id="mattermost_dialogs",
        status_code=200,
        request_max_body_size=BODY_LIMIT_SMALL,
        summary="Mattermost interactive dialog submissions: the decline reason (token-bound)",
    )
    async def dialogs(self, data: dict[str, Any], hub: Hub) -> MattermostDialogAnswer:
        return msgspec.convert(await chat.handle_mattermost_dialog(hub, data), MattermostDialogAnswer)


CONTROLLERS.append(MattermostController)


class LinkBody(msgspec.Struct):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class LinkPreview(msgspec.Struct):
    chat: str
    team: str
    chat_user: str
    chat_name: str
    expires_at: str
    user: str


class ChatLinkInfo(msgspec.Struct):
    id: str
    chat: str
    team: str
    chat_user: str
    chat_name: str
    account: str
    created_at: str


class ChatLinkController(Controller):
    """Chat accounts the signed-in person linked to themself (from the one-time link chat offered them)."""

    path = "/api/v1/me/chat-links"
    tags = ["chat"]

    @get("", operation_id="list_my_chat_links", summary="The chat accounts whose clicks count as your votes")
    async def list_links(self, principal: Principal) -> list[ChatLinkInfo]:
        return msgspec.convert(await chat_links.links_of(principal), list[ChatLinkInfo])

    @post("/preview", operation_id="preview_chat_link", status_code=200,
          summary="Which chat account a link token is for (signed-in session; spends nothing)")
    async def preview(self, data: LinkBody, principal: Principal, request: Request) -> LinkPreview:  # type: ignore[type-arg]
        chat_links.require_session(principal)  # before the token attempt: a key is no wrong token
        async with token_attempt(request):
            return LinkPreview(**await chat_links.preview(principal, data.token))

    @post("", operation_id="link_chat_account", status_code=201,
          summary="Link the chat account a one-time link token names to you (signed-in session)")
    async def link(self, data: LinkBody, principal: Principal, request: Request) -> ChatLinkInfo:  # type: ignore[type-arg]
        chat_links.require_session(principal)  # before the token attempt: a key is no wrong token
        async with token_attempt(request):
            return ChatLinkInfo(**await chat_links.redeem(principal, data.token))

    @delete("/{link_id:str}", operation_id="unlink_chat_account", status_code=204,
            summary="Unlink one of your chat accounts (its clicks map by verified email alone again)")
    async def unlink(self, link_id: str, principal: Principal) -> None:
        await chat_links.unlink(principal, link_id)


CONTROLLERS.append(ChatLinkController)
