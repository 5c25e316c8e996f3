"""Idempotency-Key on creations and votes: a retried POST gets the first answer, not a second effect.

The first answer is stored in the database (the truth survives a restart and is shared by every API
process), scoped to the caller (their key, or their user for a session) and the operation, for
`TTL`. The same key with a different body is a 409 naming the key; an answer that was an error is
not stored, so retrying it runs again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from piccolo.columns import JSONB, UUID, Integer, Timestamptz, Varchar
from piccolo.table import Table

from backend.errors import Conflict

if TYPE_CHECKING:  # piccolo_app imports the table from here, before the services exist
    from backend.accounts.service import Principal

TTL = timedelta(hours=24)
HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200


class IdempotentAnswer(Table, tablename="idempotent_answer"):
    """The first answer to a POST that carried an Idempotency-Key."""

    id = UUID(primary_key=True)
    scope = Varchar(length=400, unique=True)
    """caller, operation and key: `<key or user id>:<operation>:<Idempotency-Key>`."""
    body_hash = Varchar(length=64)
    status = Integer()
    answer = JSONB()
    created_at = Timestamptz(index=True)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Stored:
    status: int
    answer: Any


def _scope(principal: Principal, operation: str, key: str) -> str:
    caller = f"key:{principal.key_id}" if principal.key_id else f"user:{principal.user_id}"
    return f"{caller}:{operation}:{key}"


def body_hash(body: Any) -> str:
    """The body's canonical JSON hash: the same request sent with other spacing or key order matches."""
    return hashlib.sha256(msgspec.json.encode(msgspec.to_builtins(body), order="sorted")).hexdigest()


async def recall(principal: Principal, operation: str, key: str, digest: str) -> Stored | None:
    """The first answer for this key, if there is one still fresh; 409 if it was for another body."""
    row = await IdempotentAnswer.select().where(
        (IdempotentAnswer.scope == _scope(principal, operation, key))
        & (IdempotentAnswer.created_at > now() - TTL)
    ).output(load_json=True).first()
    if row is None:
        return None
    if row["body_hash"] != digest:
        raise Conflict(
            f"the {HEADER} {key!r} was already used with a different body",
            code="idempotency_key_reused",
            detail={"header": HEADER, "hint": "use a new key for a new request"},
        )
    return Stored(row["status"], row["answer"])


async def remember(principal: Principal, operation: str, key: str, digest: str, status: int, answer: Any) -> Stored:
    """Store the first answer; when a concurrent retry stored one first, that one is the answer."""
    scope = _scope(principal, operation, key)
    await IdempotentAnswer.delete().where(
        (IdempotentAnswer.scope == scope) & (IdempotentAnswer.created_at <= now() - TTL)
    )
    await IdempotentAnswer.insert(
        IdempotentAnswer(
            id=uuid.uuid4(), scope=scope, body_hash=digest, status=status,
            answer=msgspec.to_builtins(answer), created_at=now(),
        )
    ).on_conflict(action="DO NOTHING")
    # A concurrent retry may have stored its answer first; the stored one is the answer to both.
    return await recall(principal, operation, key, digest) or Stored(status, answer)


async def once(
    principal: Principal, operation: str, key: str | None, body: Any, run: Callable[[], Awaitable[tuple[int, Any]]]
) -> tuple[int, Any]:
    """Run `run` (returning status and answer) once per caller, operation and key; without a key, always."""
    if key is None:
        return await run()
    digest = body_hash(body)
    if (stored := await recall(principal, operation, key, digest)) is not None:
        return stored.status, stored.answer
    status, answer = await run()
    stored = await remember(principal, operation, key, digest, status, answer)
    return stored.status, stored.answer
