"""The in-process API-key cache never outlives a revocation: cleared at once by the change itself,
by another process's announcement on the bus, and bounded by its lifetime for edits made in the database."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.accounts import lifecycle, service
from backend.accounts.tables import ApiKey
from backend.audit.service import Actor
from backend.bus import PREFIX
from tests.helpers import Org, auth


@pytest.fixture
def long_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache that would serve a key for a minute: only invalidation can refuse it sooner."""
    monkeypatch.setattr(service, "KEY_CACHE_SECONDS", 60.0)


async def _status(client: Any, token: str) -> int:
    return int((await client.get("/api/v1/approvals", headers=auth(token))).status_code)


async def test_revoked_or_deactivated_key_is_refused_at_once(client: Any, org: Org, long_cache: None) -> None:
    carol, alice = org.approver_tokens["carol"], org.approver_tokens["alice"]
    assert await _status(client, carol) == 200  # cached from here on
    assert await _status(client, alice) == 200
    keys = {k["name"]: k for k in (await client.get("/api/v1/keys", headers=auth(org.admin_token))).json()}
    revoked = await client.post(f"/api/v1/keys/{keys['carol-approver']['id']}/revoke", headers=auth(org.admin_token))
    assert revoked.status_code == 200
    assert await _status(client, carol) == 401

    off = await client.post("/api/v1/users/alice@acme.test/deactivate", headers=auth(org.admin_token))
    assert off.status_code == 200
    assert await _status(client, alice) == 401
    on = await client.post("/api/v1/users/alice@acme.test/reactivate", headers=auth(org.admin_token))
    assert on.status_code == 200
    assert await _status(client, alice) == 200

    # A demotion takes the key's voting power at once too.
    assert (await lifecycle.set_role(org.id, "alice@acme.test", "viewer", actor=Actor.system()))["changed"]
    principal = await service.principal_for_token(alice)
    assert principal.role == "viewer" and not principal.can_decide


async def test_a_database_edit_is_refused_once_the_cache_lifetime_passes(
    client: Any, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "KEY_CACHE_SECONDS", 0.3)
    bob = org.approver_tokens["bob"]
    assert await _status(client, bob) == 200
    await ApiKey.update({ApiKey.revoked_at: datetime.now(UTC)}).where(ApiKey.token_hash == service.sha256_hex(bob))
    await asyncio.sleep(0.4)
    assert await _status(client, bob) == 401


async def test_another_processs_announcement_clears_the_cache(
    client: Any, org: Org, redis_url: str, long_cache: None
) -> None:
    bob = org.approver_tokens["bob"]
    assert await _status(client, bob) == 200
    # Revoked by another process: its row changed without this process knowing ...
    await ApiKey.update({ApiKey.revoked_at: datetime.now(UTC)}).where(ApiKey.token_hash == service.sha256_hex(bob))
    assert await _status(client, bob) == 200  # ... served from the cache (what the announcement is for)
    # ... then that process's announcement arrives through Redis, as the bus publishes it.
    redis = Redis.from_url(redis_url)
    try:
        body = json.dumps({"o": "another-process", "m": {"reason": "key.revoked"}})
        for _ in range(50):
            await redis.publish(PREFIX + service.CREDENTIALS_TOPIC, body)
            await asyncio.sleep(0.05)
            if await _status(client, bob) == 401:
                break
        assert await _status(client, bob) == 401
    finally:
        await redis.aclose()


async def test_concurrent_misses_of_one_key_share_one_lookup_and_a_change_is_not_shared(
    client: Any, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the entry lapses under load, the requests of that key in flight wait for one lookup; a
    lookup that began before a credentials change is not handed to requests that come after it."""
    carol = org.approver_tokens["carol"]
    lookups: list[int] = []
    real = service._look_up_key

    async def counted(digest: str, clock: float, generation: int) -> Any:
        lookups.append(generation)
        await asyncio.sleep(0.05)  # a slow database: the others arrive meanwhile
        return await real(digest, clock, generation)

    monkeypatch.setattr(service, "_look_up_key", counted)
    service._forget_keys()
    principals = await asyncio.gather(*(service.principal_for_token(carol) for _ in range(20)))
    assert len(lookups) == 1
    assert {p.email for p in principals} == {"carol@acme.test"}

    lookups.clear()
    service._forget_keys()
    first = asyncio.ensure_future(service.principal_for_token(carol))
    await asyncio.sleep(0.01)  # the first lookup is in flight
    service._forget_keys()  # e.g. a revocation committed meanwhile
    second = await service.principal_for_token(carol)
    assert (await first).email == second.email == "carol@acme.test"
    assert len(lookups) == 2  # the second request did not take the first one's answer


async def test_a_key_lookup_reads_what_the_builder_reads(org: Org) -> None:
    """PostgreSQL looks keys up with one prepared statement (`_KEY_SQL`); it must give the principal exactly
    what Piccolo's join gives, labels decoded, ids and times of the same types; SQLite runs the join itself."""
    carol = await service.get_user(org.id, "carol@acme.test")
    token, _ = await service.create_key(
        org.id, carol["id"], "labelled", scope="agent", labels={"team": "ops", "tier": ["a", "é"]}
    )
    digest = service.sha256_hex(token)
    built = (
        await ApiKey.select(
            ApiKey.id, ApiKey.org, ApiKey.name, ApiKey.scope, ApiKey.labels, ApiKey.revoked_at, ApiKey.last_used_at,
            ApiKey.user.id, ApiKey.user.email, ApiKey.user.role, ApiKey.user.is_active,
        )
        .where(ApiKey.token_hash == digest)
        .first()
        .output(load_json=True)
    )
    read = await service._key_row(digest)
    assert read == built and read is not None
    def kinds(row: dict[str, Any]) -> dict[str, type]:  # Piccolo hands JSON objects back as a dict subclass
        return {k: dict if isinstance(v, dict) else type(v) for k, v in row.items()}

    assert kinds(read) == kinds(built)
    assert read["labels"] == {"team": "ops", "tier": ["a", "é"]} and read["user.email"] == "carol@acme.test"
    assert await service._key_row(service.sha256_hex("pl_unknown")) is None
    principal = await service.principal_for_token(token)
    assert (principal.key_name, principal.labels, principal.user_id) == ("labelled", read["labels"], read["user.id"])
