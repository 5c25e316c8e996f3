"""Organizations, users, teams, API keys and login sessions. Secrets are stored hashed."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backend import db
from backend.accounts import totp
from backend.accounts.tables import (
    KEY_SCOPES,
    ROLES,
    ApiKey,
    Organization,
    Team,
    TeamMembership,
    User,
    UserSession,
)
from backend.audit.service import Actor, record
from backend.bus import broadcast, listen_everywhere
from backend.errors import Conflict, Forbidden, NotAuthenticated, NotFound, ValidationFailed
from backend.transactions import is_sqlite

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TEAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
LAST_USED_RESOLUTION = timedelta(minutes=1)
TOKEN_PREFIX = "pl_"  # noqa: S105 - a public marker, not a secret
DECIDING_ROLES = frozenset({"approver", "admin"})
# A key never carries more than its owner's role: viewers own agent keys, approvers approver keys.
ROLE_RANK = {"viewer": 0, "approver": 1, "admin": 2}
SCOPE_RANK = {"agent": 0, "approver": 1, "admin": 2}
HIGHEST_SCOPE = {"viewer": "agent", "approver": "approver", "admin": "admin"}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a logged-in user (session) or an API key acting for its user."""

    org_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    role: str
    via: str  # "session" | "key"
    key_id: uuid.UUID | None = None
    key_name: str = ""
    scope: str = "user"  # key scope, or "user" for sessions
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def actor(self) -> Actor:
        if self.via == "key":
            return Actor("key", str(self.key_id), f"{self.key_name} ({self.email})")
        return Actor("user", str(self.user_id), self.email)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" and (self.via == "session" or self.scope == "admin")

    @property
    def is_agent(self) -> bool:
        """An agent-scoped key: creates requests and reads its own, nothing else of the org."""
        return self.via == "key" and self.scope == "agent"

    @property
    def can_decide(self) -> bool:
        """Approvers and admins decide, by session or an approver/admin key; viewers and agents never."""
        return self.role in DECIDING_ROLES and (self.via == "session" or self.scope in {"approver", "admin"})

    @property
    def channel(self) -> str:
        """The vote channel, from how the caller authenticated: a session is the app, a key the API."""
        return "app" if self.via == "session" else "api"


def now() -> datetime:
    return datetime.now(UTC)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


@functools.cache
def _decoy_hash() -> str:
    """A hash no password matches, checked for unknown emails so they take as long as wrong passwords."""
    return hash_password(secrets.token_urlsafe(32))


def verify_password(password: str, stored: str | None) -> bool:
    """Always one scrypt run, whether or not the account (or its password) exists. Call in a thread."""
    if not stored:
        check_password(password, _decoy_hash())
        return False
    return check_password(password, stored)


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt_b64, digest_b64 = stored.split("$", 2)
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), n=2**14, r=8, p=1)
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise ValidationFailed(
            f"{email!r} is not an email address", detail={"field": "email", "hint": "use name@example.com"}
        )
    return email


# --- organizations ------------------------------------------------------------------------


async def create_org(name: str, slug: str | None = None, *, actor: Actor | None = None) -> dict[str, Any]:
    slug = slug or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "org"
    if await Organization.exists().where(Organization.slug == slug):
        raise Conflict(f"an organization with slug {slug!r} already exists", code="duplicate_org")
    org = Organization(name=name, slug=slug, created_at=now())
    await org.save()
    await record(org.id, "org.created", actor or Actor.system(), subject_type="org", subject_id=org.id,
                 data={"name": name, "slug": slug})
    return org.to_dict()


async def get_org_by_slug(slug: str) -> dict[str, Any]:
    org = await Organization.select().where(Organization.slug == slug).first()
    if org is None:
        raise NotFound(
            f"no organization {slug!r}", detail={"hint": "preloop serve creates the demo org on first start"}
        )
    return org


async def default_org() -> dict[str, Any]:
    """The single-tenant default: the oldest organization."""
    org = await Organization.select().order_by(Organization.created_at).first()
    if org is None:
        raise NotFound(
            "no organization exists yet", detail={"hint": "run `preloop serve` once, or `preloop db migrate`"}
        )
    return org


# --- users and teams ----------------------------------------------------------------------


async def add_user(
    org_id: uuid.UUID,
    email: str,
    *,
    role: str = "approver",
    name: str = "",
    password: str | None = None,
    actor: Actor | None = None,
) -> dict[str, Any]:
    email = normalize_email(email)
    if role not in ROLES:
        raise ValidationFailed(
            f"unknown role {role!r}", detail={"field": "role", "value": role, "hint": f"use one of: {', '.join(ROLES)}"}
        )
    if await User.exists().where(User.org_email == f"{org_id}:{email}"):
        raise Conflict(f"user {email} already exists", code="duplicate_user")
    user = User(
        org=org_id,
        email=email,
        org_email=f"{org_id}:{email}",
        name=name,
        role=role,
        password_hash=await asyncio.to_thread(hash_password, password) if password else None,
        created_at=now(),
    )
    await user.save()
    await record(
        org_id,
        "user.created",
        actor or Actor.system(),
        subject_type="user",
        subject_id=user.id,
        data={"email": email, "role": role},
    )
    return {"id": user.id, "email": email, "role": role, "name": name}


async def get_user(org_id: uuid.UUID, email: str) -> dict[str, Any]:
    email = email.strip().lower()
    user = await User.select().where(User.org_email == f"{org_id}:{email}").first()
    if user is None:
        raise NotFound(f"no user {email}", detail={"hint": "create one with `preloop user add EMAIL --role ROLE`"})
    return user


async def add_team(org_id: uuid.UUID, name: str, *, actor: Actor | None = None) -> dict[str, Any]:
    if not TEAM_RE.match(name):
        raise ValidationFailed(
            f"{name!r} is not a valid team name",
            detail={"field": "name", "hint": "letters, digits, '_', '-' and '.', starting with a letter or digit"},
        )
    if await Team.exists().where(Team.org_name == f"{org_id}:{name}"):
        raise Conflict(f"team {name} already exists", code="duplicate_team")
    team = Team(org=org_id, name=name, org_name=f"{org_id}:{name}", created_at=now())
    await team.save()
    await record(
        org_id, "team.created", actor or Actor.system(), subject_type="team", subject_id=team.id, data={"name": name}
    )
    return {"id": team.id, "name": name}


async def get_team(org_id: uuid.UUID, name: str) -> dict[str, Any]:
    team = await Team.select().where(Team.org_name == f"{org_id}:{name}").first()
    if team is None:
        raise NotFound(f"no team {name!r}", detail={"hint": "create it with `preloop team add NAME`"})
    return team


async def add_member(org_id: uuid.UUID, team_name: str, email: str, *, actor: Actor | None = None) -> None:
    team = await get_team(org_id, team_name)
    user = await get_user(org_id, email)
    key = f"{team['id']}:{user['id']}"
    if await TeamMembership.exists().where(TeamMembership.team_user == key):
        return
    await TeamMembership(team=team["id"], user=user["id"], team_user=key, created_at=now()).save()
    await record(
        org_id,
        "team.member_added",
        actor or Actor.system(),
        subject_type="team",
        subject_id=team["id"],
        data={"team": team_name, "email": user["email"]},
    )


async def team_members(org_id: uuid.UUID) -> dict[str, list[str]]:
    """Team name -> member emails, for the whole org (active users only)."""
    rows = await TeamMembership.select(
        TeamMembership.team.name, TeamMembership.user.email, TeamMembership.user.is_active
    ).where(TeamMembership.team.org == org_id)
    members: dict[str, list[str]] = {}
    for team in await Team.select(Team.name).where(Team.org == org_id):
        members[team["name"]] = []
    for row in rows:
        if row["user.is_active"]:
            members.setdefault(row["team.name"], []).append(row["user.email"])
    return members


# --- API keys -----------------------------------------------------------------------------


async def create_key(
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str,
    *,
    scope: str = "agent",
    labels: dict[str, Any] | None = None,
    actor: Actor | None = None,
) -> tuple[str, dict[str, Any]]:
    """Create a key; return (token, metadata). The token is shown once and stored only hashed."""
    if scope not in KEY_SCOPES:
        raise ValidationFailed(
            f"unknown key scope {scope!r}", detail={"field": "scope", "hint": f"use one of: {', '.join(KEY_SCOPES)}"}
        )
    if not name.strip():
        raise ValidationFailed("a key needs a name (the agent's name)", detail={"field": "name"})
    owner = await User.select(User.role, User.email).where((User.id == user_id) & (User.org == org_id)).first()
    if owner is None:
        raise NotFound("no such user in this organization", detail={"field": "user"})
    if SCOPE_RANK[scope] > ROLE_RANK.get(owner["role"], 0):
        highest = HIGHEST_SCOPE.get(owner["role"], "agent")
        raise Forbidden(
            f"a {scope} key for {owner['email']} would carry more than their role ({owner['role']})",
            code="scope_above_role",
            detail={"field": "scope", "role": owner["role"], "hint": f"use scope {highest} or lower"},
        )
    prefix = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        org=org_id,
        user=user_id,
        name=name.strip(),
        prefix=prefix,
        token_hash=sha256_hex(token),
        scope=scope,
        labels=labels or {},
        created_at=now(),
    )
    await key.save()
    await record(
        org_id,
        "key.created",
        actor or Actor.system(),
        subject_type="key",
        subject_id=key.id,
        data={"name": key.name, "scope": scope, "prefix": prefix, "user_id": str(user_id)},
    )
    return token, {"id": key.id, "name": key.name, "prefix": prefix, "scope": scope}


# Key lookups are cached in-process for a moment: under load one key makes many calls a second, and
# each lookup was a round trip. A revocation, deactivation or role change clears every process's cache
# at once (after its commit, through the bus); the short lifetime bounds what a lost bus message or an
# edit made straight in the database can leave behind.
KEY_CACHE_SECONDS = 0.15
CREDENTIALS_TOPIC = "accounts:credentials"
_KEYS: dict[str, tuple[float, Principal]] = {}
_KEYS_GENERATION = 0
_KEYS_MAX = 10_000
_KEYS_INFLIGHT: dict[str, tuple[int, asyncio.Future[Principal]]] = {}


async def mint_key(
    principal: Principal, name: str, *, user: str | None = None, scope: str = "agent",
    labels: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """A key for the caller or (admins only) another user of the org; a non-admin key mints none."""
    user_id = principal.user_id
    if user and user.lower() != principal.email:
        if not principal.is_admin:
            raise Forbidden("only admins create keys for other users")
        user_id = (await get_user(principal.org_id, user))["id"]
    if principal.via == "key" and not principal.is_admin:
        raise Forbidden("an agent key cannot mint keys; log in or use an admin key")
    return await create_key(principal.org_id, user_id, name, scope=scope, labels=labels, actor=principal.actor)


def mintable_scopes(principal: Principal) -> list[str]:
    """The scopes of the keys the caller may mint for themselves: none above their role (what mint_key allows)."""
    return [scope for scope in KEY_SCOPES if SCOPE_RANK[scope] <= ROLE_RANK.get(principal.role, 0)]


def _forget_keys(_topic: str = "", _message: dict[str, Any] | None = None) -> None:
    global _KEYS_GENERATION
    _KEYS_GENERATION += 1  # a lookup that started before this does not store what it read
    _KEYS.clear()


listen_everywhere(CREDENTIALS_TOPIC, _forget_keys)


async def credentials_changed(reason: str) -> None:
    """Call after committing a change that can refuse a key (revoked, owner deactivated or demoted)."""
    _forget_keys()
    await broadcast(CREDENTIALS_TOPIC, {"reason": reason})


async def principal_for_token(token: str) -> Principal:
    if not token.startswith(TOKEN_PREFIX):
        raise NotAuthenticated("that is not a Preloop API key", detail={"hint": "keys start with pl_"})
    digest = sha256_hex(token)
    clock = time.monotonic()
    cached = _KEYS.get(digest)
    if cached is not None and cached[0] > clock:
        return cached[1]
    generation = _KEYS_GENERATION
    # When the entry lapses under load, every request of that key in flight misses at once: they share
    # one lookup (one that began before a credentials change is not shared after it).
    loop = asyncio.get_running_loop()
    inflight = _KEYS_INFLIGHT.get(digest)
    if inflight is not None and inflight[0] == generation and inflight[1].get_loop() is loop:
        await asyncio.wait({inflight[1]})  # raises only if this request is cancelled
        if not inflight[1].cancelled():  # else the request that looked it up went away: look again
            return inflight[1].result()
    future: asyncio.Future[Principal] = loop.create_future()
    _KEYS_INFLIGHT[digest] = (generation, future)
    try:
        principal = await _look_up_key(digest, clock, generation)
    except Exception as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: a lookup nobody else joined must not warn
        raise
    except BaseException:
        future.cancel()
        raise
    else:
        future.set_result(principal)
        return principal
    finally:
        if _KEYS_INFLIGHT.get(digest, (0, None))[1] is future:
            del _KEYS_INFLIGHT[digest]


# The key and its owner in one prepared statement (PostgreSQL): a key's entry lapses every
# KEY_CACHE_SECONDS under load, so an org with many agents looks keys up hundreds of times a second,
# and Piccolo built this join again on every lookup (~2 ms of CPU each on a slow machine). Same columns
# and names as the builder's select below, which SQLite keeps.
_KEY_SQL = (
    'SELECT k.id, k.org, k.name, k.scope, k.labels, k.revoked_at, k.last_used_at, u.id AS "user.id", '
    'u.email AS "user.email", u.role AS "user.role", u.is_active AS "user.is_active" '
    'FROM api_key k JOIN app_user u ON u.id = k."user" WHERE k.token_hash = {}'
)


async def _key_row(digest: str) -> dict[str, Any] | None:
    if not is_sqlite():
        rows = await db.fetch(_KEY_SQL, digest)
        if not rows:
            return None
        row = rows[0]
        if isinstance(row["labels"], str):
            row["labels"] = json.loads(row["labels"])
        return row
    found: dict[str, Any] | None = (
        await ApiKey.select(
            ApiKey.id,
            ApiKey.org,
            ApiKey.name,
            ApiKey.scope,
            ApiKey.labels,
            ApiKey.revoked_at,
            ApiKey.last_used_at,
            ApiKey.user.id,
            ApiKey.user.email,
            ApiKey.user.role,
            ApiKey.user.is_active,
        )
        .where(ApiKey.token_hash == digest)
        .first()
        .output(load_json=True)
    )
    return found


async def _look_up_key(digest: str, clock: float, generation: int) -> Principal:
    row = await _key_row(digest)
    if row is None or row["revoked_at"] is not None or not row["user.is_active"]:
        _KEYS.pop(digest, None)
        raise NotAuthenticated("unknown or revoked API key")
    moment = now()
    if row["last_used_at"] is None or moment - row["last_used_at"] > LAST_USED_RESOLUTION:
        # One write a minute per key at most: "last used" is for people, not an access log.
        await ApiKey.update({ApiKey.last_used_at: moment}).where(ApiKey.id == row["id"])
    principal = Principal(
        org_id=row["org"],
        user_id=row["user.id"],
        email=row["user.email"],
        role=row["user.role"],
        via="key",
        key_id=row["id"],
        key_name=row["name"],
        scope=row["scope"],
        labels=row["labels"] or {},
    )
    if generation == _KEYS_GENERATION:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        _KEYS[digest] = (clock + KEY_CACHE_SECONDS, principal)
    return principal


# --- sessions -----------------------------------------------------------------------------


async def login(
    org_id: uuid.UUID, email: str, password: str, *, hours: int, totp_code: str | None = None
) -> tuple[str, Principal]:
    user = await User.select().where(User.org_email == f"{org_id}:{email.strip().lower()}").first()
    # scrypt runs in a thread (it would stall every other request), and for unknown emails too.
    matches = await asyncio.to_thread(verify_password, password, user["password_hash"] if user else None)
    if user is None or not user["is_active"] or not matches:
        raise NotAuthenticated("wrong email or password")
    method = "password"
    if await totp.enrolled(user["id"]):  # the second factor of people who turned it on
        method = "password+" + await totp.check(user, totp_code)
    return await open_session(user, hours=hours, method=method)


async def open_session(user: dict[str, Any], *, hours: int, method: str) -> tuple[str, Principal]:
    """Start a login session for a user already authenticated by `method` (password, passkey, totp)."""
    token = secrets.token_urlsafe(32)
    stamp = now()
    await UserSession(
        user=user["id"], token_hash=sha256_hex(token), created_at=stamp, expires_at=stamp + timedelta(hours=hours),
        passkey_verified_at=stamp if method == "passkey" else None,
    ).save()
    principal = Principal(
        org_id=user["org"], user_id=user["id"], email=user["email"], role=user["role"], via="session"
    )
    data = {} if method == "password" else {"method": method}
    await record(user["org"], "session.login", principal.actor, subject_type="user", subject_id=user["id"], data=data)
    return token, principal


async def principal_for_session(token: str) -> Principal:
    row = (
        await UserSession.select(
            UserSession.expires_at,
            UserSession.user.id,
            UserSession.user.org,
            UserSession.user.email,
            UserSession.user.role,
            UserSession.user.is_active,
        )
        .where(UserSession.token_hash == sha256_hex(token))
        .first()
    )
    if row is None or row["expires_at"] < now() or not row["user.is_active"]:
        raise NotAuthenticated("session expired; log in again")
    return Principal(
        org_id=row["user.org"], user_id=row["user.id"], email=row["user.email"], role=row["user.role"], via="session"
    )


async def logout(token: str) -> None:
    await UserSession.delete().where(UserSession.token_hash == sha256_hex(token))


async def list_keys(
    principal: Principal, *, limit: int | None = None, before: tuple[datetime, uuid.UUID] | None = None
) -> list[dict[str, Any]]:
    """The org's keys for an admin, the caller's own keys otherwise, newest first; never the token.
    A page of `limit` starts after the key `before` names (created_at, id)."""
    query = ApiKey.select(
        ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.scope, ApiKey.labels, ApiKey.created_at,
        ApiKey.last_used_at, ApiKey.revoked_at, ApiKey.user.email,
    ).where(ApiKey.org == principal.org_id)
    if not principal.is_admin:
        query = query.where(ApiKey.user == principal.user_id)
    if before is not None:
        at, key_id = before
        query = query.where((ApiKey.created_at < at) | ((ApiKey.created_at == at) & (ApiKey.id < key_id)))
    query = query.order_by(ApiKey.created_at, ApiKey.id, ascending=False)
    rows = await (query.limit(limit) if limit is not None else query).output(load_json=True)
    return [{**row, "id": str(row["id"])} for row in rows]
