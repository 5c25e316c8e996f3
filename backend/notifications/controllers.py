"""REST for deliveries, channel settings, preferences and push subscriptions; the email-link pages."""

from __future__ import annotations

import json
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, MediaType, Request, Response, delete, get, post, put
from litestar.enums import RequestEncodingType
from litestar.params import Body

from backend.accounts.service import Principal
from backend.deps import admin_guard, people_guard, token_attempt
from backend.errors import PreloopError, RateLimited
from backend.hub import Hub
from backend.notifications import channel_settings, links, preferences, push, service
from backend.notifications.compose import request_link
from backend.notifications.render import render
from backend.notifications.schemas import (
    ChannelBody,
    ChannelDeliveries,
    ChannelInfo,
    Delivery,
    Preferences,
    Subscription,
    SubscriptionBody,
    TestResult,
    Unsubscribe,
    VapidKey,
)


def _prefs(pref: preferences.Preference) -> Preferences:
    return msgspec.convert(pref.to_json(), Preferences)


class DeliveryController(Controller):
    path = "/api/v1/approvals/{approval_id:uuid}/deliveries"
    tags = ["notifications"]

    @get("", operation_id="list_deliveries", summary="Who was notified of a request, how, when, each attempt")
    async def list_deliveries(self, approval_id: UUID, principal: Principal) -> list[Delivery]:
        rows = await service.deliveries_of_request(principal, str(approval_id))
        return msgspec.convert(rows, list[Delivery])


class ChannelController(Controller):
    path = "/api/v1/channels"
    tags = ["notifications"]
    guards = [admin_guard]

    @get("", operation_id="list_channels", summary="The organization's channel settings (secrets never shown)")
    async def list_channels(self, principal: Principal, hub: Hub) -> list[ChannelInfo]:
        return msgspec.convert(await channel_settings.list_channels(hub, principal.org_id), list[ChannelInfo])

    @put("/{kind:str}", operation_id="put_channel", summary="Configure email, push or webhook for the organization")
    async def put_channel(self, kind: str, data: ChannelBody, principal: Principal, hub: Hub) -> ChannelInfo:
        info = await channel_settings.put_channel(hub, principal.org_id, principal.actor, kind, data.to_dict())
        return msgspec.convert(info, ChannelInfo)

    @get(
        "/{kind:str}/deliveries",
        operation_id="list_channel_deliveries",
        summary="Recent deliveries on one channel: counts by status over 24 h and the last attempts with errors",
    )
    async def list_channel_deliveries(self, kind: str, principal: Principal, limit: int = 50) -> ChannelDeliveries:
        return msgspec.convert(await service.channel_deliveries(principal, kind, limit=limit), ChannelDeliveries)

    @post(
        "/{kind:str}/test",
        operation_id="test_channel",
        status_code=200,
        summary="Send a test notification to yourself and return the channel's answer",
    )
    async def test_channel(self, kind: str, principal: Principal, hub: Hub) -> TestResult:
        return msgspec.convert(await service.send_test(hub, principal, kind), TestResult)


class PreferenceController(Controller):
    path = "/api/v1/me/notifications"
    tags = ["notifications"]
    guards = [people_guard]  # an agent key must not silence or redirect its owner's notifications

    @get("", operation_id="get_my_notifications")
    async def get_preferences(self, principal: Principal) -> Preferences:
        return _prefs(await preferences.get(principal.user_id))

    @put(
        "",
        operation_id="put_my_notifications",
        summary="Your channels and quiet hours (critical-risk requests ignore quiet hours)",
    )
    async def put_preferences(self, data: Preferences, principal: Principal) -> Preferences:
        return _prefs(await preferences.put(principal.user_id, msgspec.to_builtins(data)))


class PushController(Controller):
    path = "/api/v1/push"
    tags = ["notifications"]

    @get(
        "/vapid-public-key",
        operation_id="get_vapid_public_key",
        summary="The applicationServerKey for PushManager.subscribe",
    )
    async def vapid_public_key(self, hub: Hub) -> VapidKey:
        return VapidKey((await push.vapid_keys(hub)).public_key)

    @post(
        "/subscriptions",
        operation_id="add_push_subscription",
        status_code=201,
        guards=[people_guard],  # pushes carry other agents' requests: never to an agent key's endpoint
        summary="Register this browser's PushSubscription.toJSON()",
    )
    async def subscribe(self, data: SubscriptionBody, principal: Principal, request: Request) -> Subscription:  # type: ignore[type-arg]
        saved = await push.subscribe(
            principal.user_id, msgspec.to_builtins(data), request.headers.get("user-agent", "")
        )
        return Subscription(**saved)

    @delete("/subscriptions", operation_id="remove_push_subscription", status_code=204, guards=[people_guard])
    async def unsubscribe(self, data: Unsubscribe, principal: Principal) -> None:
        await push.unsubscribe(principal.user_id, data.endpoint)


def _page(name: str, status: int = 200, **context: Any) -> Response[str]:
    return Response(
        render(name, **context),
        status_code=status,
        media_type=MediaType.HTML,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"},
    )


def _refused(heading: str, exc: PreloopError) -> Response[str]:
    page = _page("result.html", exc.status, heading=heading, text=exc.message, link=None)
    if isinstance(exc, RateLimited):
        page.headers["Retry-After"] = str(exc.retry_after)
    return page


class EmailLinkController(Controller):
    """Approve/Decline links from email. GET only shows the request; the page's POST records the vote."""

    path = "/email/v"
    opt = {"form_body": True}  # the confirmation page's HTML form (see backend/request_checks.py)
    tags = ["notifications"]
    include_in_schema = False

    @get("/{token:str}", operation_id="email_link_page")
    async def confirm(self, token: str, hub: Hub, request: Request) -> Response[str]:  # type: ignore[type-arg]
        try:
            async with token_attempt(request):
                found = await links.inspect(token)
        except PreloopError as exc:
            return _refused("This link does not work", exc)
        row = found["row"]
        rule = (row.get("rule") or {}).get("description") or ""
        return _page(
            "confirm.html",
            verb="Approve" if found["decision"] == "approve" else "Decline",
            decision=found["decision"],
            row=row,
            rule=rule,
            email=found["email"],
            arguments=json.dumps(row.get("arguments"), indent=2, ensure_ascii=False),
            problem=found["problem"],
            require_reason=found["require_reason"],
            link=request_link(hub.settings.server.base_url, row["id"]),
        )

    @post("/{token:str}", operation_id="email_link_vote", status_code=200)
    async def vote(
        self,
        token: str,
        hub: Hub,
        request: Request,  # type: ignore[type-arg]
        data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[str]:
        reason = str(data.get("reason") or "").strip() or None
        try:
            async with token_attempt(request):
                row = await links.vote_by_link(hub, token, reason)
        except PreloopError as exc:
            return _refused("Your vote was not recorded", exc)
        link = request_link(hub.settings.server.base_url, row["id"])
        state = "The request is now " + row["status"] + "." if row["status"] != "pending" else "More votes are needed."
        return _page("result.html", heading="Your vote is recorded", text=state, link=link)


CONTROLLERS = [DeliveryController, ChannelController, PreferenceController, PushController, EmailLinkController]
