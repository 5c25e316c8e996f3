"""Request bodies for accounts endpoints."""

from __future__ import annotations

from typing import Any

import msgspec


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    password: str
    org: str | None = None
    totp_code: str | None = None
    """The 6-digit TOTP code or a recovery code, for people who turned the second factor on."""


class UserBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    role: str = "approver"
    name: str = ""
    password: str | None = None
    teams: list[str] = []


class TeamBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    members: list[str] = []


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    scope: str = "agent"
    labels: dict[str, Any] = {}
    user: str | None = None


class PasswordChangeBody(msgspec.Struct, forbid_unknown_fields=True):
    current_password: str
    new_password: str


class InviteAcceptBody(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    password: str


class MemberBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str


class TeamRenameBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class UserState(msgspec.Struct):
    email: str
    active: bool
    changed: bool


class InviteLink(msgspec.Struct):
    email: str
    link: str
    valid_hours: int


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
