"""Request bodies of the approvals API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# Lengths match the columns they land in, so a long value is a 400 naming the field, never a 500.
Tool = Annotated[str, msgspec.Meta(max_length=300)]
Server = Annotated[str, msgspec.Meta(max_length=200)]
Hash = Annotated[str, msgspec.Meta(max_length=128)]
Reason = Annotated[str, msgspec.Meta(max_length=2000)]
Justification = Annotated[str, msgspec.Meta(max_length=4000)]
RequestId = Annotated[str, msgspec.Meta(max_length=64)]


class CreateBody(msgspec.Struct, forbid_unknown_fields=True):
    """A held tool call, as the gateway (or any agent) submits it."""

    tool: Tool
    server: Server = ""
    arguments: dict[str, Any] = {}
    arguments_hash: Hash | None = None
    justification: Justification | None = None
    input_schema: dict[str, Any] | None = None
    """The upstream tool's JSON input schema, so approvers see its defaults among the arguments."""


class ApproveBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason | None = None
    grant_seconds: int = 0
    """Also let identical calls through for this long (capped by the policy's max_grant_seconds)."""
    channel: str | None = None
    """Ignored: the hub records the channel from how the caller authenticated (session: app, key: api)."""
    assertion: dict[str, Any] | None = None
    """A passkey step-up (PublicKeyCredential JSON) when the policy requires one."""


class DeclineBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason | None = None
    channel: str | None = None
    """Ignored: the hub records the channel from how the caller authenticated (session: app, key: api)."""
    assertion: dict[str, Any] | None = None
    """A passkey step-up (PublicKeyCredential JSON) when the policy requires one."""


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason | None = None


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[RequestId], msgspec.Meta(max_length=200)]
    decision: Literal["approve", "decline"]
    reason: Reason | None = None
    grant_seconds: int = 0
    channel: str | None = None
    """Ignored: the hub records the channel from how the caller authenticated (session: app, key: api)."""
    assertion: dict[str, Any] | None = None
    """A passkey step-up (PublicKeyCredential JSON) when the policy requires one."""


class ClaimBody(msgspec.Struct, forbid_unknown_fields=True):
    arguments_hash: Hash


class OutcomeBody(msgspec.Struct, forbid_unknown_fields=True):
    success: bool
    result_summary: str | None = None
    error: str | None = None


class WaitBody(msgspec.Struct, forbid_unknown_fields=True):
    """The long-poll as a POST, for id lists too long for a URL."""

    ids: Annotated[list[RequestId], msgspec.Meta(max_length=5000)]
    timeout: float = 25.0


class RevokeBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason | None = None
