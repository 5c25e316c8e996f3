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
