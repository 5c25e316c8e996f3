"""Request bodies of the approvals API."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class CreateBody(msgspec.Struct, forbid_unknown_fields=True):
    """A held tool call, as the gateway (or any agent) submits it."""

    tool: str
    server: str = ""
    arguments: dict[str, Any] = {}
    arguments_hash: str | None = None
    justification: str | None = None
    input_schema: dict[str, Any] | None = None
    """The upstream tool's JSON input schema, so approvers see its defaults among the arguments."""


class ApproveBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None
    grant_seconds: int = 0
    """Also let identical calls through for this long (capped by the policy's max_grant_seconds)."""
    channel: str = "api"
    assertion: dict[str, Any] | None = None
    """A passkey step-up (PublicKeyCredential JSON) when the policy requires one."""


class DeclineBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None
    channel: str = "api"
    assertion: dict[str, Any] | None = None
    """A passkey step-up (PublicKeyCredential JSON) when the policy requires one."""


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str]
    decision: Literal["approve", "decline"]
    reason: str | None = None
    grant_seconds: int = 0
    channel: str = "api"
    assertion: dict[str, Any] | None = None
    """A passkey step-up (PublicKeyCredential JSON) when the policy requires one."""


class ClaimBody(msgspec.Struct, forbid_unknown_fields=True):
    arguments_hash: str


class OutcomeBody(msgspec.Struct, forbid_unknown_fields=True):
    success: bool
    result_summary: str | None = None
    error: str | None = None


class WaitBody(msgspec.Struct, forbid_unknown_fields=True):
    """The long-poll as a POST, for id lists too long for a URL."""

    ids: list[str]
    timeout: float = 25.0


class RevokeBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None
