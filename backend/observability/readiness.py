"""Readiness: may this process take traffic? Database and Redis answer, and the schema is current."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import msgspec

from backend import db

if TYPE_CHECKING:
    from backend.hub import Hub

CHECK_SECONDS = 3.0


class Check(msgspec.Struct, omit_defaults=True):
    ok: bool
    error: str | None = None


class MigrationCheck(msgspec.Struct, omit_defaults=True):
    ok: bool
    pending: list[str]
    """Migration ids this code ships that the database has not applied."""
    error: str | None = None


class Readiness(msgspec.Struct):
    ready: bool
    database: Check
    redis: Check
    migrations: MigrationCheck
    problems: list[str]
    """One line per failed check: what is wrong and what to do."""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_SECONDS:.0f}s"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def _probe(work: Awaitable[Any]) -> tuple[Any, str | None]:
    try:
        return await asyncio.wait_for(work, CHECK_SECONDS), None
    except Exception as exc:  # any failure is the answer here, not an error of the endpoint
        return None, _one_line(exc)


async def check(hub: Hub) -> Readiness:
    _, db_error = await _probe(db.ping(hub.engine))
    redis_error: str | None = "not connected"
    if hub.redis is not None:
        _, redis_error = await _probe(hub.redis.client.ping())
    problems: list[str] = []
    if db_error:
        problems.append(f"database unreachable ({db_error}); check PRELOOP_DATABASE_URL and the server")
    if redis_error:
        problems.append(f"Redis unreachable ({redis_error}); check PRELOOP_REDIS_URL and the server")
    migrations = MigrationCheck(ok=False, pending=[], error="database unreachable")
    if not db_error:
        pending, error = await _probe(db.pending_migrations())
        if error:
            migrations = MigrationCheck(ok=False, pending=[], error=error)
            problems.append(f"could not read the migration history ({error})")
        else:
            migrations = MigrationCheck(ok=not pending, pending=pending)
            if pending:
                problems.append(
                    f"{len(pending)} migration(s) not applied ({', '.join(pending)}); run `preloop db migrate`"
                )
    return Readiness(
        ready=not problems,
        database=Check(ok=db_error is None, error=db_error),
        redis=Check(ok=redis_error is None, error=redis_error),
        migrations=migrations,
        problems=problems,
    )
