"""Chat accounts linked in the app: the fallback when a chat user's email does not map to a Preloop user.

A click by an unmapped chat user is answered (only to that user: a Slack ephemeral message, a
Mattermost `ephemeral_text`) with a link `/app/#link?token=…`. The token is single-use, bound to
(organization, chat, team, chat user), expires in 10 minutes and only its SHA-256 is stored.
Opening it while signed in to the app shows which chat account it is, and linking is a separate,
deliberate POST by that signed-in person. A linked account's clicks count as that person's votes,
through the same eligibility checks as every other vote.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.accounts.service import Principal, sha256_hex
from backend.accounts.tables import User
from backend.audit.service import record
from backend.errors import Conflict, Forbidden, NotFound, PreloopError, ValidationFailed
from backend.notifications.chat_tables import ChatLink, ChatLinkToken
from backend.transactions import write_transaction

if TYPE_CHECKING:
    from backend.hub import Hub

LINK_LIFETIME = timedelta(minutes=10)
CHATS = {"slack": "Slack", "mattermost": "Mattermost"}


class LinkGone(PreloopError):
    status = 410
    code = "link_expired"


def now() -> datetime:
    return datetime.now(UTC)



def account_of(org_id: Any, kind: str, team: str, chat_user: str) -> str:
    return f"{org_id}:{kind}:{team}:{chat_user}"[:320]


async def offer(hub: Hub, org_id: Any, kind: str, team: str, chat_user: str, chat_name: str = "") -> str:
    """A fresh one-time link for this chat user to link their account in the app (the URL to show them)."""
    token = secrets.token_urlsafe(32)
    stamp = now()
    # Tokens nobody used are of no further interest a day after they expired.
    await ChatLinkToken.delete().where(ChatLinkToken.expires_at < stamp - timedelta(days=1))
    await ChatLinkToken.insert(
        ChatLinkToken(
            id=uuid.uuid4(),
            token_hash=sha256_hex(token),
            org=org_id,
            kind=kind,
            team=team[:100],
            chat_user=chat_user[:100],
            chat_name=chat_name[:100],
            expires_at=stamp + LINK_LIFETIME,
            created_at=stamp,
        )
    )
    return f"{hub.settings.server.base_url}/app/#link?token={token}"


def unmapped_text(kind: str, url: str) -> str:
    return (
        "you are not an approver of this request. If you are a Preloop user whose "
        f"{CHATS.get(kind, kind)} email is not confirmed or differs, link this account while signed in "
        f"to the Preloop app (the link works once, for 10 minutes): {url}"
    )


async def linked_user(org_id: Any, kind: str, team: str, chat_user: str) -> dict[str, Any] | None:
    """The active Preloop user this chat account was linked to, if any."""
    if not chat_user:
        return None
    link = await ChatLink.select().where(ChatLink.account == account_of(org_id, kind, team, chat_user)).first()
    if link is None:
        return None
    user = await User.select().where((User.id == link["user"]) & (User.org == org_id)).first()
    return user if user is not None and user["is_active"] else None


def require_session(principal: Principal) -> None:
    if principal.via != "session":
        raise Forbidden("link a chat account while signed in to the Preloop app (not with an API key)")


async def _refuse(principal: Principal, why: str, found: dict[str, Any] | None, exc: PreloopError) -> None:
    data: dict[str, Any] = {"why": why}
    if found is not None and str(found["org"]) == str(principal.org_id):
        data |= {"chat": found["kind"], "team": found["team"], "chat_user": found["chat_user"]}
    async with write_transaction():
        await record(principal.org_id, "chat.link_rejected", principal.actor, subject_type="chat", subject_id="link",
                     data=data)
    raise exc


async def _usable(principal: Principal, token: str) -> dict[str, Any]:
    """The token's row, if this signed-in person may link with it now; refusals are audited."""
    require_session(principal)
    found = await ChatLinkToken.select().where(ChatLinkToken.token_hash == sha256_hex(token)).first() if token else None
    unknown = NotFound("this link is not valid: click the request's button in chat again for a new one",
                       code="link_unknown")
    if found is None:
        await _refuse(principal, "link_unknown", None, unknown)
    assert found is not None
    if str(found["org"]) != str(principal.org_id):
        await _refuse(principal, "other_org", None, unknown)  # nothing about another organization is told
    if found["used_at"] is not None:
        await _refuse(principal, "link_used", found, Conflict("this link was already used; each link works once",
                                                              code="link_used"))
    if found["expires_at"] <= now():
        await _refuse(principal, "link_expired", found,
                      LinkGone("this link has expired (10 minutes): click the button in chat again for a new one"))
    return found


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "chat": row["kind"],
        "team": row["team"],
        "chat_user": row["chat_user"],
        "chat_name": row["chat_name"],
    }


async def preview(principal: Principal, token: str) -> dict[str, Any]:
    """Which chat account a link is for, so the person can check it is their own before linking."""
    found = await _usable(principal, token)
    return {**_shown(found), "expires_at": found["expires_at"].isoformat(), "user": principal.email}


async def redeem(principal: Principal, token: str) -> dict[str, Any]:
    """Link the token's chat account to the signed-in person; the token is spent whatever happens next."""
    found = await _usable(principal, token)
    account = account_of(principal.org_id, found["kind"], found["team"], found["chat_user"])
    stamp = now()
    async with write_transaction():
        spent = (
            await ChatLinkToken.update({ChatLinkToken.used_at: stamp})
            .where((ChatLinkToken.id == found["id"]) & ChatLinkToken.used_at.is_null())
            .returning(ChatLinkToken.id)
        )
        made = []
        if spent:  # one link per chat account: of two people racing with two tokens, one links it
            link_id = uuid.uuid4()
            made = (
                await ChatLink.insert(
                    ChatLink(
                        id=link_id,
                        org=principal.org_id,
                        user=principal.user_id,
                        kind=found["kind"],
                        team=found["team"],
                        chat_user=found["chat_user"],
                        chat_name=found["chat_name"],
                        account=account,
                        created_at=stamp,
                    )
                )
                .on_conflict(target=ChatLink.account, action="DO NOTHING")
                .returning(ChatLink.id)
            )
        if made:
            await record(principal.org_id, "chat.linked", principal.actor, subject_type="user",
                         subject_id=str(principal.user_id), data={**_shown(found), "link": str(link_id)})
    existing = None if made else await ChatLink.select().where(ChatLink.account == account).first()
    if not spent:  # a concurrent redemption of the same token won
        await _refuse(principal, "link_used", found, Conflict("this link was already used; each link works once",
                                                              code="link_used"))
    if existing is not None and str(existing["user"]) != str(principal.user_id):
        await _refuse(principal, "linked_to_another_user", found, Conflict(
            "this chat account is already linked to another Preloop user; they must unlink it first",
            code="linked_to_another_user"))
    return next(link for link in await links_of(principal) if link["account"] == account)


async def links_of(principal: Principal) -> list[dict[str, Any]]:
    if principal.is_agent:
        raise Forbidden("agent keys have no chat accounts")
    rows = await ChatLink.select().where(ChatLink.user == principal.user_id).order_by(ChatLink.created_at)
    return [
        {"id": str(r["id"]), **_shown(r), "account": r["account"], "created_at": r["created_at"].isoformat()}
        for r in rows
    ]


async def unlink(principal: Principal, link_id: str) -> None:
    """Remove one of the signed-in person's own links (its clicks map by email alone again)."""
    if principal.is_agent:
        raise Forbidden("agent keys have no chat accounts")
    try:
        wanted = uuid.UUID(link_id)
    except ValueError:
        raise ValidationFailed(f"{link_id!r} is not a link id") from None
    async with write_transaction():
        gone = (
            await ChatLink.delete()
            .where((ChatLink.id == wanted) & (ChatLink.user == principal.user_id))
            .returning(ChatLink.kind, ChatLink.team, ChatLink.chat_user, ChatLink.chat_name)
        )
        if gone:
            await record(principal.org_id, "chat.unlinked", principal.actor, subject_type="user",
                         subject_id=str(principal.user_id), data={**_shown(gone[0]), "link": link_id})
    if not gone:
        raise NotFound(f"you have no chat link {link_id!r}")
