"""Single-use Approve/Decline links for email: hashed tokens bound to approver, request and decision.

Opening a link (GET) only shows the request; the vote happens on the page's POST, so a mail
scanner that fetches every link decides nothing.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.accounts.service import Principal, sha256_hex
from backend.accounts.tables import User
from backend.approvals import flows
from backend.errors import Conflict, NotFound
from backend.notifications.batching import Batch
from backend.notifications.tables import EmailActionToken

if TYPE_CHECKING:
    from backend.hub import Hub

DECISIONS = ("approve", "decline")
FALLBACK_LIFETIME = timedelta(days=7)
"""Links of a request without a deadline stop working after this long."""



def link_url(base_url: str, token: str) -> str:
    return f"{base_url}/email/v/{token}"


async def issue(row: dict[str, Any], user_id: Any, base_url: str) -> dict[str, str]:
    """One fresh token per decision for this approver; returns decision → URL."""
    expires = row.get("expires_at") or (datetime.now(UTC) + FALLBACK_LIFETIME)
    if not isinstance(expires, datetime):
        expires = datetime.fromisoformat(str(expires))
    urls: dict[str, str] = {}
    rows = []
    for decision in DECISIONS:
        token = secrets.token_urlsafe(32)
        rows.append(
            EmailActionToken(
                id=uuid.uuid4(),
                token_hash=sha256_hex(token),
                request=row["id"],
                user=user_id,
                decision=decision,
                expires_at=expires,
                created_at=datetime.now(UTC),
            )
        )
        urls[decision] = link_url(base_url, token)
    await _STORE.ask(rows)
    return urls


async def _store_many(batches: list[list[EmailActionToken]]) -> list[None]:
    await EmailActionToken.insert(*(token for batch in batches for token in batch))
    return [None] * len(batches)


_STORE: Batch[list[EmailActionToken], None] = Batch(_store_many)
"""A fan-out's mails store their link tokens together: one INSERT for the jobs running at once."""


async def _lookup(token: str) -> dict[str, Any]:
    found = await EmailActionToken.select().where(EmailActionToken.token_hash == sha256_hex(token)).first()
    if found is None:
        raise NotFound("this approval link is not valid; open the request in the approver app instead")
    return found


async def inspect(token: str) -> dict[str, Any]:
    """What the confirmation page shows: the link's decision, the request, and whether it still works."""
    found = await _lookup(token)
    row = await flows.load_row(found["request"])
    if row is None:
        raise NotFound("the request behind this link no longer exists")
    user = await User.select(User.email).where(User.id == found["user"]).first()
    expires = found["expires_at"]
    problem = None
    if found["used_at"] is not None:
        problem = "This link was already used."
    elif expires <= datetime.now(UTC):
        problem = "This link has expired."
    elif row["status"] != "pending":
        problem = f"This request is already {row['status']}."
    return {
        "decision": found["decision"],
        "row": row,
        "email": user["email"] if user else "",
        "problem": problem,
        "require_reason": bool((row.get("approval_policy") or {}).get("require_decline_reason")),
    }


async def vote_by_link(hub: Hub, token: str, reason: str | None) -> dict[str, Any]:
    """Spend the token and record its vote through `flows.record_vote` (channel "email")."""
    found = await _lookup(token)
    if found["used_at"] is not None:
        raise Conflict("this link was already used; each link decides once", code="link_used")
    if found["expires_at"] <= datetime.now(UTC):
        raise Conflict("this link has expired with its request", code="link_expired")
    user = await User.select().where(User.id == found["user"]).first()
    row = await flows.load_row(found["request"])
    if user is None or row is None or not user["is_active"]:
        raise NotFound("the approver or the request behind this link no longer exists")
    if (row.get("approval_policy") or {}).get("require_passkey"):
        raise Conflict("this request needs a passkey: decide in the approver app", code="passkey_required")
    principal = Principal(
        org_id=user["org"],
        user_id=user["id"],
        email=user["email"],
        role=user["role"],
        via="email",
        scope="approver",
        key_name="email link",
    )
    async with flows.unit_of_work():
        spent = (
            await EmailActionToken.update({EmailActionToken.used_at: datetime.now(UTC)})
            .where((EmailActionToken.id == found["id"]) & (EmailActionToken.used_at.is_null()))
            .returning(EmailActionToken.id)
        )
        if not spent:
            raise Conflict("this link was already used; each link decides once", code="link_used")
        # The sibling link (the other decision) dies with this one.
        await EmailActionToken.update({EmailActionToken.used_at: datetime.now(UTC)}).where(
            (EmailActionToken.request == found["request"])
            & (EmailActionToken.user == found["user"])
            & (EmailActionToken.used_at.is_null())
        )
        return await flows.record_vote(hub, principal, row, found["decision"], reason=reason, channel="email")
