"""Per-organization channel settings (email, push, webhook), seeded by the environment; secrets sealed."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from backend.audit.service import Actor, record
from backend.errors import NotFound, ValidationFailed
from backend.notifications.sealed import seal, unseal
from backend.notifications.tables import ChannelSetting
from backend.settings import validate_smtp_url
from backend.transactions import write_transaction

if TYPE_CHECKING:
    from backend.hub import Hub

SETTABLE = ("email", "push", "webhook", "slack", "mattermost")
"""Kinds an admin configures here."""


@dataclass(frozen=True)
class Resolved:
    kind: str
    enabled: bool
    configured: bool
    config: dict[str, Any]
    secret: str | None
    source: str  # "organization" | "environment" | "none"


def redact_smtp(url: str) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{user}{parts.hostname}{port}{query}"


def smtp_options(url: str) -> dict[str, Any]:
    """aiosmtplib keyword arguments for an smtp:// or smtps:// URL."""
    parts = urlsplit(url)
    query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
    implicit = parts.scheme == "smtps"
    return {
        "hostname": parts.hostname,
        "port": parts.port or (465 if implicit else 25),
        "username": parts.username or None,
        "password": parts.password or None,
        "use_tls": implicit,
        "start_tls": True if query.get("starttls") in {"1", "true", "yes"} else (False if not implicit else None),
    }


async def _row(org_id: Any, kind: str) -> dict[str, Any] | None:
    return (
        await ChannelSetting.select()
        .where(ChannelSetting.org_kind == f"{org_id}:{kind}")
        .output(load_json=True)
        .first()
    )


async def resolve(hub: Hub, org_id: Any, kind: str) -> Resolved:
    """The settings a delivery uses: the organization's row, else the environment's defaults."""
    row = await _row(org_id, kind)
    key = hub.settings.secret_key()
    if row is not None:
        secret = unseal(key, row["secret"]) if row["secret"] else None
        config = dict(row["config"] or {})
        configured = kind == "push" or bool(secret or config.get("url"))
        return Resolved(kind, bool(row["enabled"]), configured, config, secret, "organization")
    env = hub.settings.notifications
    if kind == "email" and env.smtp_url:
        config = {"server": redact_smtp(env.smtp_url), "from": env.smtp_from or "preloop@localhost"}
        return Resolved(kind, True, True, config, env.smtp_url, "environment")
    if kind in {"push", "web"}:
        return Resolved(kind, True, True, {}, None, "environment")
    chat = hub.settings.chat
    if kind == "slack" and chat.slack_bot_token and chat.slack_channel:
        secret = json.dumps({"bot_token": chat.slack_bot_token, "signing_secret": chat.slack_signing_secret})
        return Resolved(kind, True, True, {"channel": chat.slack_channel}, secret, "environment")
    if kind == "mattermost" and chat.mattermost_url and chat.mattermost_token and chat.mattermost_channel:
        config = {"url": chat.mattermost_url, "channel": chat.mattermost_channel}
        return Resolved(kind, True, True, config, chat.mattermost_token, "environment")
    return Resolved(kind, True, False, {}, None, "none")


def describe(resolved: Resolved) -> dict[str, Any]:
    """What an admin sees: never the secret, only whether one is set."""
    return {
        "kind": resolved.kind,
        "enabled": resolved.enabled,
        "configured": resolved.configured,
        "source": resolved.source,
        "settings": resolved.config,
        "secret_set": resolved.secret is not None,
    }


async def list_channels(hub: Hub, org_id: Any) -> list[dict[str, Any]]:
    return [describe(await resolve(hub, org_id, kind)) for kind in SETTABLE]


def _validate(kind: str, body: dict[str, Any], previous: Resolved) -> tuple[dict[str, Any], str | None]:
    """(non-secret config, secret or None to keep the stored one) for a PUT body."""
    if kind == "email":
        smtp_url = body.get("smtp_url")
        sender = str(body.get("from") or previous.config.get("from") or "").strip()
        if smtp_url is None and previous.secret is None:
            raise ValidationFailed(
                "email needs smtp_url: smtp://user:pass@host:587?starttls=true or smtps://user:pass@host:465",
                detail={"field": "smtp_url"},
            )
        if smtp_url is not None:
            try:
                validate_smtp_url(str(smtp_url), "smtp_url")
            except Exception as exc:
                raise ValidationFailed(str(exc), detail={"field": "smtp_url"}) from None
        if not sender or "@" not in sender:
            raise ValidationFailed(
                "email needs a sender: from = 'Preloop <preloop@example.com>'", detail={"field": "from"}
            )
        server = redact_smtp(str(smtp_url)) if smtp_url is not None else previous.config.get("server", "")
        return {"server": server, "from": sender}, (str(smtp_url) if smtp_url is not None else None)
    if kind == "webhook":
        url = str(body.get("url") or "").strip()
        if urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).hostname:
            raise ValidationFailed("webhook needs url: an http:// or https:// address", detail={"field": "url"})
        secret = body.get("secret")
        if secret is None and previous.secret is None:
            raise ValidationFailed(
                "webhook needs secret: the key its signatures are made with", detail={"field": "secret"}
            )
        if secret is not None and len(str(secret)) < 16:
            raise ValidationFailed("webhook secret must be at least 16 characters", detail={"field": "secret"})
        return {"url": url}, (str(secret) if secret is not None else None)
    if kind == "push":
        subject = str(body.get("subject") or previous.config.get("subject") or "").strip()
        if subject and not subject.startswith(("mailto:", "https://")):
            raise ValidationFailed("push subject must be mailto:… or https://…", detail={"field": "subject"})
        return ({"subject": subject} if subject else {}), None
    if kind == "slack":
        return _validate_slack(body, previous)
    if kind == "mattermost":
        return _validate_mattermost(body, previous)
    raise NotFound(f"no channel kind {kind!r}; settable kinds: {', '.join(SETTABLE)}")


def _validate_slack(body: dict[str, Any], previous: Resolved) -> tuple[dict[str, Any], str | None]:
    """Slack: `channel` (a channel id), secrets `bot_token` and `signing_secret` sealed together."""
    channel = str(body.get("channel") or previous.config.get("channel") or "").strip()
    if not channel or not channel.isalnum():
        raise ValidationFailed(
            "slack needs channel: the channel id (C0123456789), not its name", detail={"field": "channel"}
        )
    kept = json.loads(previous.secret) if previous.secret else {}
    token = body.get("bot_token")
    signing = body.get("signing_secret")
    if token is not None and not str(token).startswith("xoxb-"):
        raise ValidationFailed("slack bot_token must be a bot token (xoxb-…)", detail={"field": "bot_token"})
    if signing is not None and len(str(signing)) < 16:
        raise ValidationFailed(
            "slack signing_secret is the app's Signing Secret (Basic Information page)",
            detail={"field": "signing_secret"},
        )
    merged = {
        "bot_token": str(token) if token is not None else kept.get("bot_token", ""),
        "signing_secret": str(signing) if signing is not None else kept.get("signing_secret", ""),
    }
    for name, value in merged.items():
        if not value:
            raise ValidationFailed(f"slack needs {name}", detail={"field": name})
    changed = token is not None or signing is not None
    return {"channel": channel}, (json.dumps(merged) if changed else None)


def _validate_mattermost(body: dict[str, Any], previous: Resolved) -> tuple[dict[str, Any], str | None]:
    """Mattermost: server `url`, `channel` id, secret `token` (a bot's access token)."""
    url = str(body.get("url") or previous.config.get("url") or "").strip().rstrip("/")
    if urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).hostname:
        raise ValidationFailed("mattermost needs url: https://chat.example.com", detail={"field": "url"})
    channel = str(body.get("channel") or previous.config.get("channel") or "").strip()
    if not channel:
        raise ValidationFailed("mattermost needs channel: the channel id", detail={"field": "channel"})
    token = body.get("token")
    if token is None and previous.secret is None:
        raise ValidationFailed("mattermost needs token: the bot's access token", detail={"field": "token"})
    return {"url": url, "channel": channel}, (str(token) if token is not None else None)


async def put_channel(hub: Hub, org_id: Any, actor: Actor, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind not in SETTABLE:
        raise NotFound(f"no channel kind {kind!r}; settable kinds: {', '.join(SETTABLE)}")
    previous = await resolve(hub, org_id, kind)
    if previous.source != "organization":
        previous = Resolved(kind, True, False, {}, None, "none")
    config, secret = _validate(kind, body, previous)
    enabled = bool(body.get("enabled", True))
    key = hub.settings.secret_key()
    sealed = seal(key, secret) if secret is not None else (seal(key, previous.secret) if previous.secret else None)
    stamp = datetime.now(UTC)
    async with write_transaction():
        existing = await _row(org_id, kind)
        if existing is None:
            await ChannelSetting.insert(
                ChannelSetting(
                    id=uuid.uuid4(),
                    org=org_id,
                    kind=kind,
                    org_kind=f"{org_id}:{kind}",
                    enabled=enabled,
                    config=config,
                    secret=sealed,
                    updated_at=stamp,
                )
            )
        else:
            await ChannelSetting.update(
                {
                    ChannelSetting.enabled: enabled,
                    ChannelSetting.config: config,
                    ChannelSetting.secret: sealed,
                    ChannelSetting.updated_at: stamp,
                }
            ).where(ChannelSetting.id == existing["id"])
        await record(
            org_id,
            "channel.updated",
            actor,
            subject_type="channel",
            subject_id=kind,
            data={"enabled": enabled, "settings": config, "secret_changed": secret is not None},
        )
    return describe(await resolve(hub, org_id, kind))
