"""Request bodies for accounts endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

# Lengths match the columns they land in, so a long value is a 400 naming the field, never a 500.
Email = Annotated[str, msgspec.Meta(max_length=320)]
Password = Annotated[str, msgspec.Meta(max_length=1024)]
Name = Annotated[str, msgspec.Meta(max_length=200)]
Short = Annotated[str, msgspec.Meta(max_length=100)]
Labels = Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Any], msgspec.Meta(max_length=32)]


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    org: Short | None = None
    totp_code: Short | None = None
    """The 6-digit TOTP code or a recovery code, for people who turned the second factor on."""


class UserBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    role: Short = "approver"
    name: Name = ""
    password: Password | None = None
    teams: Annotated[list[Short], msgspec.Meta(max_length=100)] = []


class TeamBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Short
    members: Annotated[list[Email], msgspec.Meta(max_length=1000)] = []


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    scope: Short = "agent"
    labels: Labels = {}
    user: Email | None = None


class PasswordChangeBody(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password


class InviteAcceptBody(msgspec.Struct, forbid_unknown_fields=True):
    token: Short
    password: Password


class MemberBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email


class TeamRenameBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Short


class UserState(msgspec.Struct):
    email: str
    active: bool
    changed: bool


class InviteLink(msgspec.Struct):
    email: str
    link: str
    valid_hours: int


class LoginUser(msgspec.Struct):
    email: str
    role: str


class LoggedIn(msgspec.Struct):
    """The session is in the `preloop_session` cookie; the body names who signed in."""

    user: LoginUser


class InviteAccepted(msgspec.Struct):
    email: str


class KeyRevoked(msgspec.Struct):
    id: str
    name: str
    prefix: str
    revoked: bool


class TeamRenamed(msgspec.Struct):
    id: str
    name: str


class MemberChange(msgspec.Struct):
    team: str
    email: str
    member: bool


class UserView(msgspec.Struct):
    id: str
    email: str
    name: str | None
    role: str
    is_active: bool


class TeamView(msgspec.Struct):
    name: str
    members: list[str]
    """Members' emails, sorted."""


class CreatedTeam(msgspec.Struct):
    id: str
    name: str
    members: list[str]


class WhoKey(msgspec.Struct):
    id: str
    name: str | None
    scope: str | None
    labels: dict[str, Any] | None


class WhoUser(msgspec.Struct):
    id: str
    email: str
    role: str


class WhoOrg(msgspec.Struct):
    id: str


class WhoAmI(msgspec.Struct):
    """Who this key or session is: the user, the organization, how they signed in, the key."""

    user: WhoUser
    org: WhoOrg
    via: str
    key: WhoKey | None


class CreatedUser(msgspec.Struct):
    id: str
    email: str
    role: str
    name: str | None


class CreatedKey(msgspec.Struct):
    """A new API key. `token` is in this answer only: the hub stores only its hash."""

    id: str
    name: str
    prefix: str
    scope: str
    token: str


class KeyView(msgspec.Struct):
    id: str
    name: str
    prefix: str
    scope: str
    created_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    user_email: str | None = msgspec.field(name="user.email")
    """The key's owner."""
