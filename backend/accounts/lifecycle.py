"""Living with accounts: passwords, one-time invite links, deactivation, key revocation, team changes.

The REST API, the CLI and (later) the console call these; every change is an audit event.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

from backend.accounts.service import (
    TEAM_RE,
    Principal,
    check_password,
    credentials_changed,
    get_team,
    get_user,
    hash_password,
    now,
    sha256_hex,
)
from backend.accounts.tables import ROLES, ApiKey, Team, TeamMembership, User, UserInvite, UserSession
from backend.audit.service import Actor, record
from backend.errors import Conflict, Forbidden, NotAuthenticated, NotFound, ValidationFailed
from backend.transactions import write_transaction

MIN_PASSWORD = 8
INVITE_HOURS = 24


def _check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(
            f"a password needs at least {MIN_PASSWORD} characters", detail={"field": "password"}
        )
    if len(password) > 1024:
        raise ValidationFailed("a password is at most 1024 characters", detail={"field": "password"})


# --- passwords ----------------------------------------------------------------------------


async def set_password(org_id: uuid.UUID, email: str, password: str, *, actor: Actor) -> None:
    """An admin (or the CLI) sets someone's password; their other sessions end."""
    _check_new_password(password)
    user = await get_user(org_id, email)
    async with write_transaction():
        await User.update({User.password_hash: hash_password(password)}).where(User.id == user["id"])
        await UserSession.delete().where(UserSession.user == user["id"])
        await record(org_id, "user.password_set", actor, subject_type="user", subject_id=user["id"],
                     data={"email": user["email"]})


async def change_own_password(principal: Principal, current: str, new: str) -> None:
    """A signed-in person changes their password; it takes the current one."""
    if principal.via != "session":
        raise Forbidden("change your password from a signed-in session, not with an API key")
    _check_new_password(new)
    user = await User.select(User.password_hash).where(User.id == principal.user_id).first()
    if user is None or not check_password(current, user["password_hash"]):
        raise NotAuthenticated("the current password is wrong", detail={"field": "current_password"})
    async with write_transaction():
        await User.update({User.password_hash: hash_password(new)}).where(User.id == principal.user_id)
        await record(principal.org_id, "user.password_changed", principal.actor, subject_type="user",
                     subject_id=principal.user_id, data={"email": principal.email})


# --- one-time invite links ----------------------------------------------------------------


async def create_invite(org_id: uuid.UUID, email: str, *, actor: Actor, hours: int = INVITE_HOURS) -> str:
    """A single-use token to set a password, valid `hours`; earlier unused invites of the user stop working."""
    user = await get_user(org_id, email)
    if not user["is_active"]:
        raise Conflict(f"{user['email']} is deactivated; reactivate them first", code="user_inactive")
    token = secrets.token_urlsafe(32)
    async with write_transaction():
        await UserInvite.delete().where((UserInvite.user == user["id"]) & UserInvite.used_at.is_null())
        await UserInvite(
            user=user["id"], token_hash=sha256_hex(token), created_at=now(),
            expires_at=now() + timedelta(hours=hours),
        ).save()
        await record(org_id, "user.invited", actor, subject_type="user", subject_id=user["id"],
                     data={"email": user["email"], "valid_hours": hours})
    return token


async def accept_invite(token: str, password: str) -> dict[str, Any]:
    """Set the password from an invite token; the token is spent whatever happens next."""
    _check_new_password(password)
    async with write_transaction():
        invite = await UserInvite.select(
            UserInvite.id, UserInvite.expires_at, UserInvite.used_at, UserInvite.user.id, UserInvite.user.org,
            UserInvite.user.email, UserInvite.user.is_active,
        ).where(UserInvite.token_hash == sha256_hex(token)).first()
        if invite is None or invite["used_at"] is not None:
            raise NotAuthenticated("this invite link is unknown or already used; ask an admin for a new one")
        if invite["expires_at"] < now():
            raise NotAuthenticated("this invite link has expired; ask an admin for a new one")
        if not invite["user.is_active"]:
            raise NotAuthenticated("this account is deactivated")
        claimed = await UserInvite.update({UserInvite.used_at: now()}).where(
            (UserInvite.id == invite["id"]) & UserInvite.used_at.is_null()
        ).returning(UserInvite.id)
        if not claimed:
            raise NotAuthenticated("this invite link is already used; ask an admin for a new one")
        await User.update({User.password_hash: hash_password(password)}).where(User.id == invite["user.id"])
        await record(invite["user.org"], "user.invite_accepted", Actor("user", str(invite["user.id"]),
                     invite["user.email"]), subject_type="user", subject_id=invite["user.id"],
                     data={"email": invite["user.email"]})
    return {"email": invite["user.email"]}


# --- deactivate / reactivate --------------------------------------------------------------


async def set_active(org_id: uuid.UUID, email: str, active: bool, *, actor: Actor,
                     by_user: uuid.UUID | None = None) -> dict[str, Any]:
    """Deactivated people cannot sign in; their sessions end and their keys stop at once."""
    user = await get_user(org_id, email)
    if not active and by_user is not None and user["id"] == by_user:
        raise Conflict("you cannot deactivate yourself", code="self_deactivation")
    if not active and user["role"] == "admin":
        admins = await User.count().where((User.org == org_id) & (User.role == "admin") & (User.is_active == True))  # noqa: E712
        if admins <= 1 and user["is_active"]:
            raise Conflict("this is the last active admin; make someone else admin first", code="last_admin")
    if user["is_active"] == active:
        return {"email": user["email"], "active": active, "changed": False}
    async with write_transaction():
        await User.update({User.is_active: active}).where(User.id == user["id"])
        if not active:
            await UserSession.delete().where(UserSession.user == user["id"])
        await record(org_id, "user.reactivated" if active else "user.deactivated", actor, subject_type="user",
                     subject_id=user["id"], data={"email": user["email"]})
    await credentials_changed("user.reactivated" if active else "user.deactivated")
    return {"email": user["email"], "active": active, "changed": True}


async def _last_active_admin(org_id: uuid.UUID, user: dict[str, Any]) -> bool:
    if user["role"] != "admin" or not user["is_active"]:
        return False
    admins = await User.count().where((User.org == org_id) & (User.role == "admin") & (User.is_active == True))  # noqa: E712
    return bool(admins <= 1)


async def set_role(org_id: uuid.UUID, email: str, role: str, *, actor: Actor) -> dict[str, Any]:
    """Change someone's role; the organization always keeps an active admin."""
    if role not in ROLES:
        raise ValidationFailed(
            f"unknown role {role!r}", detail={"field": "role", "hint": f"use one of: {', '.join(ROLES)}"}
        )
    user = await get_user(org_id, email)
    if user["role"] == role:
        return {"email": user["email"], "role": role, "changed": False}
    if await _last_active_admin(org_id, user):
        raise Conflict("this is the last active admin; make someone else admin first", code="last_admin")
    async with write_transaction():
        await User.update({User.role: role}).where(User.id == user["id"])
        await record(org_id, "user.role_changed", actor, subject_type="user", subject_id=user["id"],
                     data={"email": user["email"], "from": user["role"], "to": role})
    await credentials_changed("user.role_changed")
    return {"email": user["email"], "role": role, "changed": True}


async def list_users(org_id: uuid.UUID, *, limit: int | None = None, after: str | None = None) -> list[dict[str, Any]]:
    """Everyone in the organization (active or not) with role, by email; a page of `limit` after email `after`."""
    query = User.select(User.id, User.email, User.name, User.role, User.is_active, User.created_at).where(
        User.org == org_id
    )
    if after is not None:
        query = query.where(User.email > after)
    query = query.order_by(User.email)
    users = await (query.limit(limit) if limit is not None else query)
    return [{**user, "id": str(user["id"])} for user in users]


async def list_people(org_id: uuid.UUID) -> list[dict[str, Any]]:
    """Everyone in the organization (active or not) with role and teams, by email."""
    users = await list_users(org_id)
    memberships = await TeamMembership.select(TeamMembership.user, TeamMembership.team.name).where(
        TeamMembership.team.org == org_id
    )
    teams: dict[str, list[str]] = {}
    for row in memberships:
        teams.setdefault(str(row["user"]), []).append(row["team.name"])
    return [{**user, "teams": sorted(teams.get(user["id"], []))} for user in users]


# --- keys ---------------------------------------------------------------------------------


async def revoke_key(principal_org: uuid.UUID, key_ref: str, *, actor: Actor,
                     owner: uuid.UUID | None = None) -> dict[str, Any]:
    """Revoke a key by id or by its public prefix; `owner` limits it to that user's keys."""
    query = ApiKey.select(ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.revoked_at, ApiKey.user).where(
        ApiKey.org == principal_org
    )
    try:
        query = query.where(ApiKey.id == uuid.UUID(key_ref))
    except ValueError:
        query = query.where(ApiKey.prefix == key_ref.removeprefix("pl_"))
    rows = await query
    if owner is not None:
        rows = [row for row in rows if row["user"] == owner]
    if not rows:
        raise NotFound(f"no key {key_ref!r}", detail={"hint": "see GET /api/v1/keys for ids and prefixes"})
    if len(rows) > 1:
        raise Conflict(f"several keys have prefix {key_ref!r}; revoke by id", code="ambiguous_key")
    key = rows[0]
    if key["revoked_at"] is None:
        async with write_transaction():
            await ApiKey.update({ApiKey.revoked_at: now()}).where(ApiKey.id == key["id"])
            await record(principal_org, "key.revoked", actor, subject_type="key", subject_id=key["id"],
                         data={"name": key["name"], "prefix": key["prefix"]})
        await credentials_changed("key.revoked")
    return {"id": str(key["id"]), "name": key["name"], "prefix": key["prefix"], "revoked": True}


async def revoke_key_for(principal: Principal, key_ref: str) -> dict[str, Any]:
    """Revoke a key as `principal`: admins any key of the org, others their own; never with an agent's key."""
    if principal.via == "key" and not principal.is_admin:
        raise Forbidden("an agent or approver key cannot revoke keys; log in or use an admin key")
    owner = None if principal.is_admin else principal.user_id
    return await revoke_key(principal.org_id, key_ref, actor=principal.actor, owner=owner)


# --- teams --------------------------------------------------------------------------------


async def remove_member(org_id: uuid.UUID, team_name: str, email: str, *, actor: Actor) -> bool:
    team = await get_team(org_id, team_name)
    user = await get_user(org_id, email)
    async with write_transaction():
        gone = await TeamMembership.delete().where(TeamMembership.team_user == f"{team['id']}:{user['id']}").returning(
            TeamMembership.id
        )
        if gone:
            await record(org_id, "team.member_removed", actor, subject_type="team", subject_id=team["id"],
                         data={"team": team_name, "email": user["email"]})
    return bool(gone)


async def rename_team(org_id: uuid.UUID, old: str, new: str, *, actor: Actor) -> dict[str, Any]:
    if not TEAM_RE.match(new):
        raise ValidationFailed(
            f"{new!r} is not a valid team name",
            detail={"field": "name", "hint": "letters, digits, '_', '-' and '.', starting with a letter or digit"},
        )
    team = await get_team(org_id, old)
    if await Team.exists().where(Team.org_name == f"{org_id}:{new}"):
        raise Conflict(f"team {new} already exists", code="duplicate_team")
    async with write_transaction():
        await Team.update({Team.name: new, Team.org_name: f"{org_id}:{new}"}).where(Team.id == team["id"])
        await record(org_id, "team.renamed", actor, subject_type="team", subject_id=team["id"],
                     data={"from": old, "to": new})
    return {"id": str(team["id"]), "name": new}


async def delete_team(org_id: uuid.UUID, name: str, *, actor: Actor) -> None:
    team = await get_team(org_id, name)
    async with write_transaction():
        members = await TeamMembership.count().where(TeamMembership.team == team["id"])
        await TeamMembership.delete().where(TeamMembership.team == team["id"])
        await Team.delete().where(Team.id == team["id"])
        await record(org_id, "team.deleted", actor, subject_type="team", subject_id=team["id"],
                     data={"name": name, "members": members})
