"""Slack: one Block Kit message per request in the organization's channel, updated in place with the outcome.

Settings (`PUT /api/v1/channels/slack`): `channel` (id), and the secrets `bot_token` and
`signing_secret`, sealed together as one JSON document. The Web API is reached with slack-sdk's
`AsyncWebClient` at `PRELOOP_SLACK_API_URL`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from backend.notifications import chat
from backend.notifications.channels import Answer, ChannelError, Message, Target

SEND_TIMEOUT = 10
TRANSIENT = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})


def secrets_of(secret: str | None) -> dict[str, str]:
    """The sealed JSON {"bot_token", "signing_secret"} (an empty dict when unset or unreadable)."""
    if not secret:
        return {}
    try:
        found = json.loads(secret)
    except ValueError:
        return {}
    return {k: str(v) for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}


def client(hub: Any, bot_token: str) -> AsyncWebClient:
    return AsyncWebClient(token=bot_token, base_url=hub.settings.chat.slack_api_url, timeout=SEND_TIMEOUT)


def escape(text: str) -> str:
    """Slack mrkdwn control characters (the rest is shown as typed)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _deadline(message: Message) -> str:
    if message.deadline_epoch is None:
        return "none"
    iso = escape(message.deadline or "")
    return f"<!date^{int(message.deadline_epoch)}^{{date_short_pretty}} {{time}}|{iso}>"


def facts_blocks(message: Message) -> list[dict[str, Any]]:
    """What an approver checks: tool, server, arguments, requester, why, justification, deadline, votes."""
    server = f" on `{escape(message.server)}`" if message.server else ""
    why = escape(message.rule or message.reason or "the policy asks for approval")
    if message.risk:
        why += f" (risk: *{escape(message.risk)}*)"
    lines = [
        f"*Tool:* `{escape(message.tool)}`{server}",
        f"*Requester:* {escape(message.agent)} ({escape(message.owner or 'unknown owner')})",
        f"*Why:* {why}",
        f"*Justification:* {escape(message.justification or '(none given)')}",
        f"*Deadline:* {_deadline(message)}",
        f"*Votes needed:* {message.votes_needed} of {message.quorum}",
    ]
    arguments = "\n".join(f"{a.name}: {a.value}" for a in message.arguments) or "(no arguments)"
    return [
        {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Arguments:*\n```{escape(arguments)[:2800]}```"}},
    ]


def action_block(message: Message) -> dict[str, Any]:
    if message.passkey_required:
        # Step-up stays step-up: the only button opens the approver app, where the passkey is asked.
        return {
            "type": "actions",
            "block_id": "preloop_actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": "preloop_open",
                    "text": {"type": "plain_text", "text": "Open in Preloop (passkey required)"},
                    "url": message.link,
                    "value": message.request_id,
                }
            ],
        }
    return {
        "type": "actions",
        "block_id": "preloop_actions",
        "elements": [
            {
                "type": "button",
                "action_id": "preloop_approve",
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": message.request_id,
            },
            {
                "type": "button",
                "action_id": "preloop_decline",
                "style": "danger",
                "text": {"type": "plain_text", "text": "Decline"},
                "value": message.request_id,
            },
            {
                "type": "button",
                "action_id": "preloop_open",
                "text": {"type": "plain_text", "text": "Open"},
                "url": message.link,
                "value": message.request_id,
            },
        ],
    }


def request_blocks(message: Message) -> list[dict[str, Any]]:
    return [*facts_blocks(message), action_block(message)]


def outcome_blocks(message: Message) -> list[dict[str, Any]]:
    """The same facts, the outcome instead of buttons."""
    return [
        *facts_blocks(message),
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{escape(message.outcome or message.status)}*"}},
    ]


async def call(coro: Any, *, within: float = SEND_TIMEOUT) -> dict[str, Any]:
    """One Web API call; Slack's refusals become ChannelErrors (permanent unless Slack may recover)."""
    try:
        response = await asyncio.wait_for(coro, timeout=within)
    except SlackApiError as exc:
        error = str(exc.response.get("error") or exc.response.status_code)
        raise ChannelError(f"slack refused: {error}", permanent=error not in TRANSIENT) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ChannelError(f"slack unreachable: {type(exc).__name__}: {exc}") from exc
    return dict(response.data) if isinstance(response.data, dict) else {}


class SlackChannel:
    kind: ClassVar[str] = "slack"

    async def send(self, message: Message, target: Target) -> Answer:
        keys = secrets_of(target.secret)
        channel_id = str(target.config.get("channel") or "")
        if not keys.get("bot_token") or not channel_id:
            return Answer(
                "slack is not configured: PUT /api/v1/channels/slack {bot_token, signing_secret, channel}", True
            )
        web = client(target.hub, keys["bot_token"])
        if message.event == "test":  # the settings page's test: a plain message, nothing remembered
            answer = await call(web.chat_postMessage(channel=channel_id, text=f"{message.title}: {message.summary}"))
            return Answer(f"ts={answer.get('ts')}")
        post = await chat.post_of(message.request_id, self.kind)
        if message.event == "requested" or post is None:
            if post is not None:  # a retry after Slack accepted: never a second message
                return Answer(f"already posted ts={post['post_id']}")
            if message.event == "outcome":
                return Answer("nothing was posted for this request", skipped=True)
            answer = await call(
                web.chat_postMessage(
                    channel=channel_id, text=message.title, blocks=request_blocks(message), unfurl_links=False
                )
            )
            await chat.remember_post(message.org_id, message.request_id, self.kind, answer["channel"], answer["ts"])
            return Answer(f"ts={answer['ts']}")
        if message.event == "outcome":
            await call(
                web.chat_update(
                    channel=post["channel"], ts=post["post_id"], text=message.title, blocks=outcome_blocks(message)
                )
            )
            await call(web.chat_postMessage(channel=post["channel"], thread_ts=post["post_id"], text=message.outcome))
            return Answer(f"updated ts={post['post_id']}")
        note = f"{message.title} ({message.votes_needed} of {message.quorum} votes still needed)"
        answer = await call(web.chat_postMessage(channel=post["channel"], thread_ts=post["post_id"], text=note))
        return Answer(f"thread ts={answer.get('ts')}")


CHANNEL = SlackChannel()
