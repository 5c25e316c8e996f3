"""Mattermost: one post per request with interactive message actions, updated with the outcome.

Mattermost signs nothing, so each button's `context` carries an opaque single-use token bound to
(request, decision, post id); only its SHA-256 is stored (`chat_action_token`). Settings: server
`url`, `channel` id, secret `token` (a bot access token).
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from backend.notifications import chat
from backend.notifications.channels import Answer, ChannelError, Message, Target, http_client

SEND_TIMEOUT = 10.0
CALLBACK_PATH = "/api/v1/integrations/mattermost/actions"
DIALOG_PATH = "/api/v1/integrations/mattermost/dialogs"


def on_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def callback_url(public_url: str, path: str = CALLBACK_PATH) -> str:
    """Where Mattermost posts clicks (and dialogs): https, unless the hub itself is on loopback (a local trial)."""
    url = f"{public_url.rstrip('/')}{path}"
    if urlsplit(url).scheme != "https" and not on_loopback(url):
        raise ChannelError(
            f"mattermost buttons need an https callback, but PRELOOP_PUBLIC_URL is {public_url!r}: "
            "serve the hub over https (or on loopback for a local trial)",
            permanent=True,
        )
    return url


def text_of(message: Message) -> str:
    server = f" on `{message.server}`" if message.server else ""
    arguments = "\n".join(f"{a.name}: {a.value}" for a in message.arguments) or "(no arguments)"
    why = message.rule or message.reason or "the policy asks for approval"
    if message.risk:
        why += f" (risk: **{message.risk}**)"
    return "\n".join(
        [
            f"#### {message.title}",
            f"**Tool:** `{message.tool}`{server}",
            f"**Requester:** {message.agent} ({message.owner or 'unknown owner'})",
            f"**Why:** {why}",
            f"**Justification:** {message.justification or '(none given)'}",
            f"**Deadline:** {message.deadline or 'none'}",
            f"**Votes needed:** {message.votes_needed} of {message.quorum}",
            f"**Arguments:**\n```\n{arguments[:3000]}\n```",
            f"[Open in Preloop]({message.link})",
        ]
    )


def attachment(message: Message, tokens: dict[str, str], callback: str) -> dict[str, Any]:
    """The buttons: one per decision, each carrying its own token (none when a passkey is required)."""
    if message.passkey_required:
        return {"text": f"A passkey is required: [decide in the Preloop app]({message.link})."}
    labels = {"approve": ("Approve", "good"), "decline": ("Decline", "danger")}
    return {
        "text": "Decide here or in the Preloop app.",
        "actions": [
            {
                "id": decision,
                "name": labels[decision][0],
                "style": labels[decision][1],
                "integration": {"url": callback, "context": {"token": token}},
            }
            for decision, token in tokens.items()
        ],
    }


async def api(target_url: str, token: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        async with http_client(SEND_TIMEOUT) as http:
            response = await http.request(method, f"{target_url}{path}", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ChannelError(f"mattermost unreachable: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 300:
        permanent = response.status_code in {400, 401, 403, 404}
        raise ChannelError(
            f"mattermost answered HTTP {response.status_code}: {response.text[:200]}", permanent=permanent
        )
    found = response.json()
    return found if isinstance(found, dict) else {}


class MattermostChannel:
    kind: ClassVar[str] = "mattermost"

    async def send(self, message: Message, target: Target) -> Answer:
        url = str(target.config.get("url") or "").rstrip("/")
        channel_id = str(target.config.get("channel") or "")
        if not url or not channel_id or not target.secret:
            return Answer("mattermost is not configured: PUT /api/v1/channels/mattermost {url, token, channel}", True)
        if message.event == "test":  # the settings page's test: a plain post, nothing remembered
            plain = {"channel_id": channel_id, "message": f"{message.title}: {message.summary}"}
            made = await api(url, target.secret, "POST", "/api/v4/posts", plain)
            return Answer(f"post {made.get('id')}")
        post = await chat.post_of(message.request_id, self.kind)
        if post is None:
            if message.event != "requested":
                return Answer("nothing was posted for this request", skipped=True)
            callback = callback_url(target.public_url)
            tokens = {} if message.passkey_required else await chat.issue_tokens(message.request_id)
            body = {
                "channel_id": channel_id,
                "message": text_of(message),
                "props": {"attachments": [attachment(message, tokens, callback)]},
            }
            created = await api(url, target.secret, "POST", "/api/v4/posts", body)
            await chat.bind_tokens(tokens, str(created["id"]))
            await chat.remember_post(message.org_id, message.request_id, self.kind, channel_id, str(created["id"]))
            return Answer(f"post {created['id']}")
        if message.event == "requested":
            return Answer(f"already posted {post['post_id']}")
        if message.event == "outcome":
            body = {
                "id": post["post_id"],
                "message": text_of(message),
                "props": {"attachments": [{"text": f"**{message.outcome or message.status}**"}]},
            }
            await api(url, target.secret, "PUT", f"/api/v4/posts/{post['post_id']}", body)
        note = message.outcome or f"{message.title} ({message.votes_needed} of {message.quorum} votes still needed)"
        reply = {"channel_id": post["channel"], "root_id": post["post_id"], "message": note}
        await api(url, target.secret, "POST", "/api/v4/posts", reply)
        return Answer(f"{message.event} on post {post['post_id']}")


CHANNEL = MattermostChannel()
