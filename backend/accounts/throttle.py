"""Failed credentials are counted in Redis (shared by every API process): per account, a lockout;
per client address, a limit on passwords, keys and sessions tried. Both answer 429 + Retry-After."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from backend.errors import PreloopError, RateLimited
from backend.settings import SecuritySettings


def _account_key(org_id: uuid.UUID | str, email: str) -> str:
    return f"preloop:auth:account:{org_id}:{email.strip().lower()}"


def _address_key(address: str) -> str:
    return f"preloop:auth:address:{address}"


async def _refuse_when_over(redis: Redis, key: str, limit: int, message: str, window: int) -> None:
    count = int(await redis.get(key) or 0)
    if count >= limit:
        ttl = int(await redis.ttl(key))
        raise RateLimited(message, retry_after=ttl if ttl > 0 else window, detail={"limit": limit})


async def _count(redis: Redis, key: str, window: int) -> None:
    if await redis.incr(key) == 1:
        await redis.expire(key, window)


async def check_address(redis: Redis, security: SecuritySettings, address: str) -> None:
    await _refuse_when_over(
        redis, _address_key(address), security.address_max_failures,
        "too many failed sign-ins or keys from this address; try again later", security.lockout_seconds,
    )


async def failed_credential(redis: Redis, security: SecuritySettings, address: str) -> None:
    await _count(redis, _address_key(address), security.lockout_seconds)


async def check_login(
    redis: Redis, security: SecuritySettings, org_id: uuid.UUID | str, email: str, address: str
) -> None:
    """Refuse before the password is even checked when the account or the address is locked out."""
    await check_address(redis, security, address)
    await _refuse_when_over(
        redis, _account_key(org_id, email), security.login_max_failures,
        "this account is locked after too many wrong passwords; try again later", security.lockout_seconds,
    )


async def failed_login(
    redis: Redis, security: SecuritySettings, org_id: uuid.UUID | str, email: str, address: str
) -> None:
    await _count(redis, _account_key(org_id, email), security.lockout_seconds)
    await failed_credential(redis, security, address)


async def succeeded_login(redis: Redis, org_id: uuid.UUID | str, email: str) -> None:
    await redis.delete(_account_key(org_id, email))


@asynccontextmanager
async def token_attempt(redis: Redis, security: SecuritySettings, address: str) -> AsyncIterator[None]:
    """A token-checking step (invite token, email link, passkey assertion): refused at once when the
    address is over its limit; a refused token (any 4xx) counts like a wrong password."""
    await check_address(redis, security, address)
    try:
        yield
    except PreloopError as exc:
        if 400 <= exc.status < 500 and not isinstance(exc, RateLimited):
            await failed_credential(redis, security, address)
        raise
