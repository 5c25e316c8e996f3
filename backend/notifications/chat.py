"""Chat approvals (Slack): verified callbacks, user mapping, votes from buttons, thread discussion.

Every refusal is audited (`chat.callback_rejected` for a callback that fails its checks,
`approval.vote_rejected` for a click by someone who may not vote) and counts for nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from backend.accounts.service import Principal, sha256_hex
from backend.accounts.tables import User
from backend.approvals import flows
from backend.approvals.tables import ApprovalRequest, Vote
from backend.audit.service import Actor, record
from backend.errors import Conflict, Forbidden, NotFound, PreloopError, ValidationFailed
from backend.notifications.chat_tables import ChatActionToken, ChatComment, ChatPost
from backend.notifications.tables import ChannelSetting
from backend.transactions import write_transaction

if TYPE_CHECKING:
    from backend.hub import Hub

logger = logging.getLogger("preloop.chat")

SLACK_TOLERANCE_SECONDS = 300
"""Slack callbacks older (or newer) than this are refused: a captured request cannot be replayed later."""
REPLAY_TTL_SECONDS = 2 * SLACK_TOLERANCE_SECONDS
"""Signatures seen are remembered this long: longer than the tolerance, so a replay is always caught."""
USER_CACHE_SECONDS = 300
LOOKUP_TIMEOUT_SECONDS = 2.0
NOT_APPROVER = "you are not an approver of this request"
DECLINE_MODAL = "preloop_decline"
DIALOG_DECISION = "dialog"
"""A Mattermost dialog's token: the `state` of the decline-reason dialog, never a button's."""


class CallbackRefused(PreloopError):
    """A chat callback that failed its checks (answered 401, nothing recorded)."""

    status = 401


def now() -> datetime:
    return datetime.now(UTC)


# --- posts and threads --------------------------------------------------------------------------


async def post_of(request_id: Any, kind: str) -> dict[str, Any] | None:
    return await ChatPost.select().where(ChatPost.request_kind == f"{request_id}:{kind}").first()


async def remember_post(org_id: Any, request_id: Any, kind: str, channel: str, post_id: str) -> None:
    await ChatPost.insert(
        ChatPost(
            id=uuid.uuid4(),
            org=org_id,
            request=request_id,
            kind=kind,
            request_kind=f"{request_id}:{kind}",
            channel=channel,
            post_id=post_id,
            created_at=now(),
        )
    ).on_conflict(target=ChatPost.request_kind, action="DO NOTHING")


# --- Slack signatures ---------------------------------------------------------------------------


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{raw body}` with the app's signing secret."""
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Signer:
    org_id: str | None  # None: the environment's secret, for organizations without their own settings
    signing_secret: str
    bot_token: str


async def slack_signers(hub: Hub) -> list[Signer]:
    """Every signing secret this hub accepts: each organization's, and the environment's."""
    from backend.notifications.channels.slack import secrets_of
    from backend.notifications.sealed import unseal

    key = hub.settings.secret_key()
    found: list[Signer] = []
    rows = await ChannelSetting.select().where(ChannelSetting.kind == "slack")
    for row in rows:
        if not row["secret"] or not row["enabled"]:
            continue
        try:
            keys = secrets_of(unseal(key, row["secret"]))
        except Exception:  # a secret sealed with another key: that org must enter it again
            logger.warning("unreadable slack settings", extra={"org": str(row["org"])})
            continue
        if keys.get("signing_secret"):
            found.append(Signer(str(row["org"]), keys["signing_secret"], keys.get("bot_token", "")))
    env = hub.settings.chat
    if env.slack_signing_secret:
        found.append(Signer(None, env.slack_signing_secret, env.slack_bot_token))
    return found


async def _orgs_with_own_slack() -> set[str]:
    rows = await ChannelSetting.select(ChannelSetting.org).where(ChannelSetting.kind == "slack")
    return {str(r["org"]) for r in rows}


async def verify_slack(hub: Hub, headers: dict[str, str], body: bytes) -> Signer:
    """The signer whose secret made this request's `X-Slack-Signature`, or CallbackRefused."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not timestamp.isdigit() or not signature.startswith("v0="):
        raise CallbackRefused("missing X-Slack-Request-Timestamp or X-Slack-Signature", code="unsigned")
    if abs(time.time() - int(timestamp)) > SLACK_TOLERANCE_SECONDS:
        raise CallbackRefused("the request timestamp is more than 5 minutes off", code="stale_timestamp")
    for signer in await slack_signers(hub):
        if hmac.compare_digest(slack_signature(signer.signing_secret, timestamp, body), signature):
            break
    else:
        raise CallbackRefused("X-Slack-Signature does not match any configured signing secret", code="bad_signature")
    # Within the tolerance a captured request is still correctly signed: each signature counts once.
    assert hub.redis is not None
    seen = f"chat:slack:seen:{hashlib.sha256(signature.encode()).hexdigest()}"
    if not await hub.redis.client.set(seen, "1", nx=True, ex=REPLAY_TTL_SECONDS):
        raise CallbackRefused("this exact request was already received", code="replayed")
    return signer


async def _audit_refusal(org_id: Any, request_id: Any, chat: str, why: str, data: dict[str, Any]) -> None:
    async with write_transaction():
        await record(
            org_id,
            "chat.callback_rejected",
            Actor.system(chat),
            subject_type="approval" if request_id else "chat",
            subject_id=str(request_id or chat),
            data={"why": why, "chat": chat, **data},
        )


def _interaction_payload(body: bytes) -> dict[str, Any]:
    form = parse_qs(body.decode("utf-8", "replace"))
    raw = (form.get("payload") or [""])[-1]
    try:
        payload = json.loads(raw)
    except ValueError:
        raise CallbackRefused("the body must be form-encoded payload=<json>", code="bad_payload") from None
    if not isinstance(payload, dict):
        raise CallbackRefused("payload must be a JSON object", code="bad_payload")
    return payload


def _named_request(payload: dict[str, Any]) -> str:
    actions = payload.get("actions") or []
    if actions and isinstance(actions[0], dict):
        return str(actions[0].get("value") or "")
    return str((payload.get("view") or {}).get("private_metadata") or "")


async def refuse_unverified(exc: CallbackRefused, body: bytes, chat: str = "slack") -> None:
    """Audit a refused callback on the organization of the request it names (if it names one)."""
    try:
        named = _named_request(_interaction_payload(body))
    except CallbackRefused:
        named = ""
    row = await flows.load_row(named) if named else None
    if row is None:
        logger.warning("chat callback refused", extra={"why": exc.code, "chat": chat})
        return
    await _audit_refusal(row["org"], row["id"], chat, str(exc.code), {"message": exc.message})


async def slack_views_open(hub: Hub, org_id: Any, signer: Signer, trigger_id: str, view: dict[str, Any]) -> None:
    from backend.notifications.channels.slack import call, client

    token = await _bot_token(hub, org_id) or signer.bot_token
    # trigger_id lives 3 s: open the modal now, inside the interaction's answer.
    await call(client(hub, token).views_open(trigger_id=trigger_id, view=view), within=LOOKUP_TIMEOUT_SECONDS)


# --- Slack users → Preloop users ----------------------------------------------------------------


async def slack_email(hub: Hub, signer: Signer, org_id: Any, slack_user: str) -> str | None:
    """The Slack user's email if Slack says it is confirmed (users.info), cached for a few minutes."""
    from backend.notifications.channels import ChannelError
    from backend.notifications.channels.slack import call, client

    assert hub.redis is not None
    cache = f"chat:slack:user:{org_id}:{slack_user}"
    hit = await hub.redis.client.get(cache)
    if hit is not None:
        text = hit.decode() if isinstance(hit, bytes) else str(hit)
        return text or None
    token = await _bot_token(hub, org_id) or signer.bot_token
    try:
        # Within Slack's 3 s for an interaction answer; an unanswered lookup maps nobody.
        answer = await call(client(hub, token).users_info(user=slack_user), within=LOOKUP_TIMEOUT_SECONDS)
    except ChannelError:
        logger.warning("users.info failed", extra={"slack_user": slack_user})
        return None
    user = answer.get("user") or {}
    email = str((user.get("profile") or {}).get("email") or "")
    verified = bool(user.get("is_email_confirmed")) and not user.get("deleted") and not user.get("is_bot")
    found = email.lower() if email and verified else ""
    await hub.redis.client.set(cache, found, ex=USER_CACHE_SECONDS)
    return found or None


async def _bot_token(hub: Hub, org_id: Any) -> str:
    from backend.notifications import channel_settings
    from backend.notifications.channels.slack import secrets_of

    resolved = await channel_settings.resolve(hub, org_id, "slack")
    return secrets_of(resolved.secret).get("bot_token", "")


async def audit_unmapped(row: dict[str, Any], chat: str, chat_user: str, email: str | None) -> None:
    """A click by someone who maps to no Preloop user of the request's organization: on the record."""
    async with write_transaction():
        await record(
            row["org"],
            "approval.vote_rejected",
            Actor("chat", chat_user, f"{chat} user {chat_user}"),
            subject_type="approval",
            subject_id=row["id"],
            data={"why": "chat_user_unmapped", "via": chat, "email": email, "chat_user": chat_user},
        )


@dataclass(frozen=True)
class ChatUser:
    """Who clicked, as the chat names them: the chat, its team (workspace) id, the user's id and name."""

    kind: str
    team: str
    id: str
    name: str = ""


async def principal_for(org_id: Any, email: str | None, chat: str) -> Principal | None:
    if not email:
        return None
    user = await User.select().where((User.org == org_id) & (User.email == email)).first()
    return _as_principal(user, chat)


async def chat_principal(
    org_id: Any, who: ChatUser, email_of: Callable[[], Awaitable[str | None]]
) -> tuple[Principal | None, str | None]:
    """The Preloop user a click counts for: the account its owner linked in the app, else the verified email."""
    from backend.notifications import chat_links

    linked = await chat_links.linked_user(org_id, who.kind, who.team, who.id)
    if linked is not None:
        return _as_principal(linked, who.kind), str(linked["email"])
    email = await email_of()
    return await principal_for(org_id, email, who.kind), email


async def unmapped(hub: Hub, row: dict[str, Any], who: ChatUser, email: str | None) -> str:
    """Audit a click by nobody Preloop knows; the answer (for that chat user only) offers a one-time link."""
    from backend.notifications import chat_links

    await audit_unmapped(row, who.kind, who.id, email)
    url = await chat_links.offer(hub, row["org"], who.kind, who.team, who.id, who.name)
    return chat_links.unmapped_text(who.kind, url)


def _as_principal(user: dict[str, Any] | None, chat: str) -> Principal | None:
    if user is None or not user["is_active"]:
        return None
    return Principal(
        org_id=user["org"],
        user_id=user["id"],
        email=user["email"],
        role=user["role"],
        via=chat,
        scope="approver",
        key_name=chat,
    )


# --- interactions -------------------------------------------------------------------------------

_TASKS: set[asyncio.Task[None]] = set()


def later(work: Coroutine[Any, Any, None]) -> None:
    """Run after the answer: Slack wants its answer within 3 s, the thread post may follow."""

    async def guarded() -> None:
        try:
            await work
        except Exception:
            logger.exception("chat follow-up failed")

    task = asyncio.create_task(guarded())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _ephemeral(hub: Hub, org_id: Any, signer: Signer, channel: str, user: str, text: str) -> None:
    from backend.notifications.channels.slack import call, client

    token = await _bot_token(hub, org_id) or signer.bot_token
    await call(client(hub, token).chat_postEphemeral(channel=channel, user=user, text=text))


async def _thread_note(hub: Hub, org_id: Any, request_id: Any, text: str) -> None:
    from backend.notifications.channels.slack import call, client

    post = await post_of(request_id, "slack")
    if post is None:
        return
    token = await _bot_token(hub, org_id)
    if not token:
        token = hub.settings.chat.slack_bot_token
    await call(client(hub, token).chat_postMessage(channel=post["channel"], thread_ts=post["post_id"], text=text))


async def progress_line(row: dict[str, Any], who: str, decision: str) -> str:
    quorum = max(1, int(flows.policy_of(row).get("quorum") or 1))
    approvals = await Vote.count().where((Vote.request == row["id"]) & (Vote.decision == "approve"))
    verb = "approved" if decision == "approve" else "declined"
    return f"{who} {verb} — {approvals} of {quorum}"


def _decline_modal(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": DECLINE_MODAL,
        "private_metadata": str(row["id"]),
        "title": {"type": "plain_text", "text": "Decline request"},
        "submit": {"type": "plain_text", "text": "Decline"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": f"Why decline {row['tool']}?"},
                "element": {"type": "plain_text_input", "action_id": "reason", "multiline": True},
            }
        ],
    }


async def _request_for(signer: Signer, request_id: str) -> dict[str, Any] | None:
    row = await flows.load_row(request_id) if request_id else None
    if row is None:
        return None
    if signer.org_id is not None:
        return row if str(row["org"]) == signer.org_id else None
    # The environment's secret speaks only for organizations that did not set their own.
    return None if str(row["org"]) in await _orgs_with_own_slack() else row


async def handle_slack_interaction(hub: Hub, headers: dict[str, str], body: bytes) -> dict[str, Any] | None:
    """A verified click or modal submission; returns the JSON Slack expects (None: an empty 200)."""
    try:
        signer = await verify_slack(hub, headers, body)
    except CallbackRefused as exc:
        await refuse_unverified(exc, body)
        raise
    payload = _interaction_payload(body)
    kind = payload.get("type")
    user = payload.get("user") or {}
    slack_user = str(user.get("id") or "")
    team = str((payload.get("team") or {}).get("id") or user.get("team_id") or "")
    who = ChatUser("slack", team, slack_user, str(user.get("username") or user.get("name") or ""))
    if kind == "block_actions":
        action = (payload.get("actions") or [{}])[0]
        action_id = str(action.get("action_id") or "")
        if action_id not in {"preloop_approve", "preloop_decline"}:
            return None  # the Open link: Slack reports the click, there is nothing to do
        decision = "approve" if action_id == "preloop_approve" else "decline"
        channel = str((payload.get("channel") or {}).get("id") or "")
        row = await _request_for(signer, str(action.get("value") or ""))
        if row is None:
            raise CallbackRefused(
                "the button names no request of this workspace's organization", code="unknown_request"
            )
        policy = flows.policy_of(row)
        if decision == "decline" and policy.get("require_decline_reason") and not policy.get("require_passkey"):
            # Only someone who may decline is asked why; anyone else is refused (and audited) below.
            org = row["org"]
            principal, _ = await chat_principal(org, who, lambda: slack_email(hub, signer, org, slack_user))
            if (
                principal is not None
                and principal.can_decide
                and str(principal.user_id) in await flows.eligible_users(row)
            ):
                trigger = str(payload.get("trigger_id") or "")
                await slack_views_open(hub, row["org"], signer, trigger, _decline_modal(row))
                return None
        await _vote(hub, signer, row, who, channel, decision, None)
        return None
    if kind == "view_submission":
        view = payload.get("view") or {}
        if view.get("callback_id") != DECLINE_MODAL:
            return None
        row = await _request_for(signer, str(view.get("private_metadata") or ""))
        if row is None:
            raise CallbackRefused("the form names no request of this workspace's organization", code="unknown_request")
        values = ((view.get("state") or {}).get("values") or {}).get("reason") or {}
        reason = str((values.get("reason") or {}).get("value") or "").strip()
        if not reason:
            return {"response_action": "errors", "errors": {"reason": "This policy requires a reason to decline."}}
        problem = await _vote(hub, signer, row, who, "", "decline", reason)
        if problem:
            return {"response_action": "errors", "errors": {"reason": problem}}
        return None
    return None


async def _vote(
    hub: Hub, signer: Signer, row: dict[str, Any], who: ChatUser, channel: str, decision: str, reason: str | None
) -> str | None:
    """Record the click as the mapped person's vote; returns what went wrong (also told ephemerally)."""
    principal, email = await chat_principal(row["org"], who, lambda: slack_email(hub, signer, row["org"], who.id))
    problem: str | None = None
    if principal is None:
        problem = await unmapped(hub, row, who, email)
    else:
        try:
            await flows.record_vote(hub, principal, row, decision, reason=reason, channel="slack")
        except Forbidden as exc:
            problem = NOT_APPROVER if exc.code in {"not_eligible", "role_cannot_vote", "own_request"} else exc.message
        except (Conflict, ValidationFailed) as exc:
            problem = exc.message
        else:
            line = await progress_line(row, principal.email.split("@")[0], decision)
            later(_thread_note(hub, row["org"], row["id"], line))
    if problem and channel:
        later(_ephemeral(hub, row["org"], signer, channel, who.id, problem))
    return problem


# --- Events API: thread replies become the request's discussion --------------------------------


async def _thread_post(channel: str, thread: str) -> dict[str, Any] | None:
    if not channel or not thread:
        return None
    where = (ChatPost.kind == "slack") & (ChatPost.channel == channel) & (ChatPost.post_id == thread)
    return await ChatPost.select().where(where).first()


async def _refuse_event(exc: CallbackRefused, body: bytes) -> None:
    """Audit a refused event on the request whose thread it names (if it names one of ours)."""
    try:
        event = json.loads(body).get("event") or {}
        post = await _thread_post(str(event.get("channel") or ""), str(event.get("thread_ts") or ""))
    except (ValueError, AttributeError):
        post = None
    if post is None:
        logger.warning("slack event refused", extra={"why": exc.code})
        return
    await _audit_refusal(post["org"], post["request"], "slack", str(exc.code), {"message": exc.message, "event": True})


async def handle_slack_event(hub: Hub, headers: dict[str, str], body: bytes) -> dict[str, Any] | None:
    try:
        signer = await verify_slack(hub, headers, body)
    except CallbackRefused as exc:
        await _refuse_event(exc, body)
        raise
    try:
        document = json.loads(body)
    except ValueError:
        raise ValidationFailed("the Events API body must be JSON") from None
    if document.get("type") == "url_verification":
        return {"challenge": str(document.get("challenge") or "")}
    event = document.get("event") or {}
    if document.get("type") != "event_callback" or event.get("type") != "message":
        return None
    thread, ts = str(event.get("thread_ts") or ""), str(event.get("ts") or "")
    if not thread or thread == ts or event.get("bot_id") or event.get("subtype"):
        return None  # not a human reply in a thread
    post = await _thread_post(str(event.get("channel") or ""), thread)
    if post is None:
        return None
    if signer.org_id is not None and str(post["org"]) != signer.org_id:
        return None
    slack_user = str(event.get("user") or "")
    email = None
    if slack_user:
        who = ChatUser("slack", str(document.get("team_id") or ""), slack_user)
        org = post["org"]
        _, email = await chat_principal(org, who, lambda: slack_email(hub, signer, org, slack_user))
    await ChatComment.insert(
        ChatComment(
            id=uuid.uuid4(),
            org=post["org"],
            request=post["request"],
            kind="slack",
            external_id=f"slack:{post['channel']}:{ts}"[:200],
            author=(email or f"slack:{slack_user}")[:320],
            chat_user=slack_user[:100],
            text=str(event.get("text") or "")[:4000],
            created_at=now(),
        )
    ).on_conflict(target=ChatComment.external_id, action="DO NOTHING")
    await _announce_comment(hub, post["org"], post["request"])
    return None


COMMENT_SOURCES = ("app", "console", "api")
COMMENT_MAX_CHARS = 4000


async def _announce_comment(hub: Hub, org_id: Any, request_id: Any) -> None:
    """A hint on the org's event stream: open detail views fetch the discussion again (no text in it)."""
    from backend.events import publish_event

    await publish_event(hub.bus, org_id, "approval.commented", {"request_id": str(request_id)})


async def add_comment(
    hub: Hub, principal: Principal, request_id: str, text: str, *, source: str = "api"
) -> dict[str, Any]:
    """A comment in the request's discussion, written in Preloop (the app, the console or the API).

    Who may write: people who may decide (approvers and admins, signed in or with an approver/admin
    key), whether or not they are named on this request. Viewers read the discussion but do not
    write in it (the viewer role changes nothing); agent keys neither read nor write it.
    """
    if principal.is_agent:
        raise Forbidden("agent keys cannot comment on a request; use an approver or admin key")
    if not principal.can_decide:
        raise Forbidden(
            "viewers read a request's discussion but cannot comment; approvers and admins can",
            detail={"role": principal.role},
        )
    if source not in COMMENT_SOURCES:
        raise ValidationFailed(f"source must be one of {', '.join(COMMENT_SOURCES)}")
    body = (text or "").strip()
    if not body:
        raise ValidationFailed("a comment needs text", detail={"field": "text"})
    if len(body) > COMMENT_MAX_CHARS:
        raise ValidationFailed(
            f"a comment has at most {COMMENT_MAX_CHARS} characters (this one has {len(body)})",
            detail={"field": "text"},
        )
    rid = flows.parse_id(request_id)
    if rid is None or not await ApprovalRequest.exists().where(
        (ApprovalRequest.id == rid) & (ApprovalRequest.org == principal.org_id)
    ):
        raise NotFound(f"no approval request {request_id!r}")
    comment_id = uuid.uuid4()
    stamp = now()
    async with write_transaction():
        await ChatComment.insert(
            ChatComment(
                id=comment_id,
                org=principal.org_id,
                request=rid,
                kind=source,
                external_id=f"preloop:{comment_id}",
                author=principal.email[:320],
                chat_user="",
                text=body,
                created_at=stamp,
            )
        )
        await record(
            principal.org_id,
            "approval.commented",
            principal.actor,
            subject_type="approval",
            subject_id=str(rid),
            data={"comment": str(comment_id), "source": source, "chars": len(body)},
        )
    await _announce_comment(hub, principal.org_id, rid)
    return {
        "id": str(comment_id),
        "source": source,
        "author": principal.email,
        "text": body,
        "created_at": stamp.isoformat(),
    }


async def comments_of_request(principal: Principal, request_id: str) -> list[dict[str, Any]]:
    """The request's discussion (its chat threads and comments written in Preloop), oldest first.

    People of the request's organization read it, viewers included; agent keys do not.
    """
    if principal.is_agent:
        raise Forbidden("agent keys cannot read a request's discussion; use an approver or admin key")
    rid = flows.parse_id(request_id)
    if rid is None or not await ApprovalRequest.exists().where(
        (ApprovalRequest.id == rid) & (ApprovalRequest.org == principal.org_id)
    ):
        raise NotFound(f"no approval request {request_id!r}")
    rows = await ChatComment.select().where(ChatComment.request == rid).order_by(ChatComment.created_at)
    return [
        {
            "id": str(r["id"]),
            "source": r["kind"],
            "author": r["author"],
            "text": r["text"],
            "created_at": r["created_at"].isoformat(),
        }
        for r in rows
    ]


# --- Mattermost: single-use button tokens --------------------------------------------------------

TOKEN_LIFETIME_FALLBACK_DAYS = 7



async def issue_tokens(request_id: Any, post_id: str | None = None) -> dict[str, str]:
    """A fresh token per decision for the request's post; decision → token (only hashes are stored)."""
    import secrets
    from datetime import timedelta

    row = await flows.load_row(request_id)
    expires = (row or {}).get("expires_at") or (now() + timedelta(days=TOKEN_LIFETIME_FALLBACK_DAYS))
    if not isinstance(expires, datetime):
        expires = datetime.fromisoformat(str(expires))
    tokens = {decision: secrets.token_urlsafe(32) for decision in ("approve", "decline")}
    await ChatActionToken.insert(
        *[
            ChatActionToken(
                id=uuid.uuid4(),
                token_hash=sha256_hex(token),
                request=request_id,
                decision=decision,
                post_id=post_id,
                expires_at=expires,
                created_at=now(),
            )
            for decision, token in tokens.items()
        ]
    )
    return tokens


async def bind_tokens(tokens: dict[str, str], post_id: str) -> None:
    """Bind freshly issued tokens to the post that carries them (known only once it is created)."""
    if tokens:
        hashes = [sha256_hex(t) for t in tokens.values()]
        await ChatActionToken.update({ChatActionToken.post_id: post_id}).where(
            ChatActionToken.token_hash.is_in(hashes) & ChatActionToken.post_id.is_null()
        )


async def _mattermost_email(hub: Hub, org_id: Any, user_id: str) -> str | None:
    """The clicking user's email, when Mattermost says it is verified (GET /api/v4/users/{id}), cached."""
    from backend.notifications import channel_settings
    from backend.notifications.channels import ChannelError
    from backend.notifications.channels.mattermost import api

    assert hub.redis is not None
    cache = f"chat:mattermost:user:{org_id}:{user_id}"
    hit = await hub.redis.client.get(cache)
    if hit is not None:
        text = hit.decode() if isinstance(hit, bytes) else str(hit)
        return text or None
    settings = await channel_settings.resolve(hub, org_id, "mattermost")
    url = str(settings.config.get("url") or "")
    if not url or not settings.secret or not user_id.isalnum():
        return None
    try:
        user = await api(url, settings.secret, "GET", f"/api/v4/users/{user_id}", {})
    except ChannelError:
        logger.warning("mattermost user lookup failed", extra={"mattermost_user": user_id})
        return None
    email = str(user.get("email") or "")
    found = email.lower() if email and user.get("email_verified") and not user.get("delete_at") else ""
    await hub.redis.client.set(cache, found, ex=USER_CACHE_SECONDS)
    return found or None


async def _mattermost_thread(hub: Hub, org_id: Any, request_id: Any, text: str) -> None:
    from backend.notifications import channel_settings
    from backend.notifications.channels.mattermost import api

    post = await post_of(request_id, "mattermost")
    settings = await channel_settings.resolve(hub, org_id, "mattermost")
    if post is None or not settings.secret:
        return
    body = {"channel_id": post["channel"], "root_id": post["post_id"], "message": text}
    await api(str(settings.config.get("url") or ""), settings.secret, "POST", "/api/v4/posts", body)


async def _refuse_unknown_token(post_id: str, user_id: str) -> None:
    """A made-up token: audited on the request whose post it was sent for, when that post is one of ours."""
    post = await ChatPost.select().where((ChatPost.kind == "mattermost") & (ChatPost.post_id == post_id)).first()
    if post is None:
        logger.warning("mattermost callback with an unknown token and post", extra={"post_id": post_id[:100]})
        return
    await _audit_refusal(post["org"], post["request"], "mattermost", "bad_token", {"post_id": post_id, "user": user_id})


async def handle_mattermost_action(hub: Hub, body: dict[str, Any]) -> dict[str, Any]:
    """A button click: the token must exist, be unused, unexpired and belong to the clicked post."""
    context = body.get("context") if isinstance(body.get("context"), dict) else {}
    token = str((context or {}).get("token") or "")
    post_id = str(body.get("post_id") or "")
    user_id = str(body.get("user_id") or "")
    found = await ChatActionToken.select().where(ChatActionToken.token_hash == sha256_hex(token)).first()
    if found is None:
        await _refuse_unknown_token(post_id, user_id)
        raise CallbackRefused("this button's token is not valid", code="bad_token")
    row = await flows.load_row(found["request"])
    assert row is not None
    why = None
    if found["decision"] not in {"approve", "decline"}:  # a dialog's token is no button's
        why = ("token_wrong_kind", "this token does not belong to a button")
    elif found["post_id"] is None or not hmac.compare_digest(str(found["post_id"]), post_id):
        why = ("token_wrong_post", "this button's token belongs to another post")
    elif found["used_at"] is not None:
        why = ("token_used", "this button was already used; each button decides once")
    elif found["expires_at"] <= now():
        why = ("token_expired", "this button has expired with its request")
    if why:
        await _audit_refusal(row["org"], row["id"], "mattermost", why[0], {"post_id": post_id, "user": user_id})
        raise CallbackRefused(why[1], code=why[0])
    org = row["org"]
    who = ChatUser("mattermost", str(body.get("team_id") or ""), user_id, str(body.get("user_name") or ""))
    principal, email = await chat_principal(org, who, lambda: _mattermost_email(hub, org, user_id))
    if principal is None:
        return {"ephemeral_text": await unmapped(hub, row, who, email)}
    decision = str(found["decision"])
    if (
        decision == "decline"
        and flows.policy_of(row).get("require_decline_reason")
        and principal.can_decide
        and str(principal.user_id) in await flows.eligible_users(row)
    ):
        # Only someone who may decline is asked why; anyone else is refused (and audited) below.
        return await _open_decline_dialog(hub, row, post_id, who, str(body.get("trigger_id") or ""))
    stamp = now()
    async with write_transaction():
        spent = (
            await ChatActionToken.update({ChatActionToken.used_at: stamp})
            .where((ChatActionToken.id == found["id"]) & ChatActionToken.used_at.is_null())
            .returning(ChatActionToken.id)
        )
        if spent:  # its sibling (the other decision on the same post) goes with it; the post gets fresh ones
            await ChatActionToken.update({ChatActionToken.used_at: stamp}).where(
                (ChatActionToken.request == found["request"])
                & (ChatActionToken.post_id == post_id)
                & ChatActionToken.decision.is_in(["approve", "decline"])
                & ChatActionToken.used_at.is_null()
            )
    if not spent:
        await _audit_refusal(row["org"], row["id"], "mattermost", "token_used", {"post_id": post_id, "user": user_id})
        raise CallbackRefused("this button was already used; each button decides once", code="token_used")
    try:
        # Its own transaction, so a refused vote is audited; the buttons then work again for others.
        decided = await flows.record_vote(hub, principal, row, decision, channel="mattermost")
    except (Forbidden, Conflict, ValidationFailed) as exc:
        await ChatActionToken.update({ChatActionToken.used_at: None}).where(
            (ChatActionToken.request == found["request"])
            & (ChatActionToken.post_id == post_id)
            & (ChatActionToken.used_at == stamp)
        )
        refused = isinstance(exc, Forbidden) and exc.code in {"not_eligible", "role_cannot_vote", "own_request"}
        return {"ephemeral_text": NOT_APPROVER if refused else exc.message}
    line = await progress_line(row, principal.email.split("@")[0], decision)
    later(_mattermost_thread(hub, row["org"], row["id"], line))
    return {"update": await _mattermost_update(hub, decided, post_id), "ephemeral_text": line}


async def _mattermost_update(hub: Hub, row: dict[str, Any], post_id: str) -> dict[str, Any]:
    """The post after a vote: the outcome without buttons, or fresh single-use buttons."""
    from backend.notifications.channels.mattermost import attachment, callback_url, text_of
    from backend.notifications.compose import compose

    message = await compose(
        row,
        {"id": "update", "event": "outcome" if row["status"] != "pending" else "requested"},
        hub.settings.server.base_url,
    )
    if row["status"] != "pending":
        return {"message": text_of(message), "props": {"attachments": [{"text": f"**{message.outcome}**"}]}}
    tokens = await issue_tokens(row["id"], post_id)
    callback = callback_url(hub.settings.server.base_url)
    return {"message": text_of(message), "props": {"attachments": [attachment(message, tokens, callback)]}}


# --- Mattermost: the decline-reason dialog ------------------------------------------------------

DIALOG_LIFETIME_SECONDS = 600


async def _open_decline_dialog(
    hub: Hub, row: dict[str, Any], post_id: str, who: ChatUser, trigger_id: str
) -> dict[str, Any]:
    """Ask the reason in an interactive dialog; its `state` is a single-use token bound to this user and post."""
    import secrets
    from datetime import timedelta

    from backend.notifications import channel_settings
    from backend.notifications.channels import ChannelError
    from backend.notifications.channels.mattermost import DIALOG_PATH, api, callback_url

    token = secrets.token_urlsafe(32)
    expires = min(row["expires_at"] or now() + timedelta(days=1), now() + timedelta(seconds=DIALOG_LIFETIME_SECONDS))
    await ChatActionToken.insert(
        ChatActionToken(
            id=uuid.uuid4(),
            token_hash=sha256_hex(token),
            request=row["id"],
            decision=DIALOG_DECISION,
            post_id=post_id,
            chat_user=who.id[:100],
            expires_at=expires,
            created_at=now(),
        )
    )
    settings = await channel_settings.resolve(hub, row["org"], "mattermost")
    dialog = {
        "trigger_id": trigger_id,
        "url": callback_url(hub.settings.server.base_url, DIALOG_PATH),
        "dialog": {
            "callback_id": DECLINE_MODAL,
            "title": "Decline request",
            "introduction_text": f"Why decline {row['tool']}? The agent is told who declined and why.",
            "elements": [{"display_name": "Reason", "name": "reason", "type": "textarea", "max_length": 2000}],
            "submit_label": "Decline",
            "notify_on_cancel": False,
            "state": token,
        },
    }
    try:
        # The trigger id is short-lived: open the dialog now, inside the click's answer.
        await api(str(settings.config.get("url") or ""), settings.secret or "", "POST",
                  "/api/v4/actions/dialogs/open", dialog)
    except ChannelError as exc:
        logger.warning("mattermost dialog did not open", extra={"error": str(exc)})
        link = f"{hub.settings.server.base_url}/app/#/requests/{row['id']}"
        return {"ephemeral_text": f"This policy requires a reason to decline: decline in the Preloop app, {link}"}
    return {}


async def handle_mattermost_dialog(hub: Hub, body: dict[str, Any]) -> dict[str, Any]:
    """The decline dialog's submission: its `state` token must be unused, unexpired and this user's."""
    token = str(body.get("state") or "")
    user_id = str(body.get("user_id") or "")
    found = await ChatActionToken.select().where(
        (ChatActionToken.token_hash == sha256_hex(token)) & (ChatActionToken.decision == DIALOG_DECISION)
    ).first() if token else None
    if found is None or body.get("callback_id") != DECLINE_MODAL:
        logger.warning("mattermost dialog with an unknown state", extra={"user": user_id[:100]})
        raise CallbackRefused("this dialog's token is not valid", code="bad_token")
    row = await flows.load_row(found["request"])
    assert row is not None
    org, post_id = row["org"], str(found["post_id"])
    why = None
    if not hmac.compare_digest(str(found["chat_user"] or ""), user_id):
        why = ("token_wrong_user", "this dialog was opened for someone else")
    elif found["used_at"] is not None:
        why = ("token_used", "this dialog was already submitted")
    elif found["expires_at"] <= now():
        why = ("token_expired", "this dialog has expired: click Decline again")
    if why:
        await _audit_refusal(org, row["id"], "mattermost", why[0], {"post_id": post_id, "user": user_id})
        raise CallbackRefused(why[1], code=why[0])
    if body.get("cancelled"):
        return {}
    submitted = body.get("submission") if isinstance(body.get("submission"), dict) else {}
    reason = str((submitted or {}).get("reason") or "").strip()
    if not reason:
        return {"errors": {"reason": "This policy requires a reason to decline."}}
    who = ChatUser("mattermost", str(body.get("team_id") or ""), user_id)
    principal, email = await chat_principal(org, who, lambda: _mattermost_email(hub, org, user_id))
    if principal is None:
        return {"error": await unmapped(hub, row, who, email)}
    spent = (
        await ChatActionToken.update({ChatActionToken.used_at: now()})
        .where((ChatActionToken.id == found["id"]) & ChatActionToken.used_at.is_null())
        .returning(ChatActionToken.id)
    )
    if not spent:
        await _audit_refusal(org, row["id"], "mattermost", "token_used", {"post_id": post_id, "user": user_id})
        raise CallbackRefused("this dialog was already submitted", code="token_used")
    try:
        decided = await flows.record_vote(hub, principal, row, "decline", reason=reason, channel="mattermost")
    except (Forbidden, Conflict, ValidationFailed) as exc:
        refused = isinstance(exc, Forbidden) and exc.code in {"not_eligible", "role_cannot_vote", "own_request"}
        return {"error": NOT_APPROVER if refused else exc.message}
    line = await progress_line(row, principal.email.split("@")[0], "decline")
    later(_mattermost_thread(hub, org, row["id"], line))
    if decided["status"] == "pending":  # still open: the post's buttons are replaced by fresh ones
        later(_mattermost_refresh(hub, decided, post_id))
    return {}


async def _mattermost_refresh(hub: Hub, row: dict[str, Any], post_id: str) -> None:
    from backend.notifications import channel_settings
    from backend.notifications.channels.mattermost import api

    await ChatActionToken.update({ChatActionToken.used_at: now()}).where(
        (ChatActionToken.request == row["id"])
        & (ChatActionToken.post_id == post_id)
        & ChatActionToken.decision.is_in(["approve", "decline"])
        & ChatActionToken.used_at.is_null()
    )
    settings = await channel_settings.resolve(hub, row["org"], "mattermost")
    update = {"id": post_id, **await _mattermost_update(hub, row, post_id)}
    await api(str(settings.config.get("url") or ""), settings.secret or "", "PUT", f"/api/v4/posts/{post_id}", update)
