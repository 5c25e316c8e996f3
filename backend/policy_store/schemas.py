"""Request bodies for the policy endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

MAX_POLICY_CHARS = 256 * 1024
"""The largest policy source accepted (characters); the body limit is a little above it."""


class SourceBody(msgspec.Struct, forbid_unknown_fields=True):
    source: Annotated[str, msgspec.Meta(max_length=MAX_POLICY_CHARS)]
    message: Annotated[str, msgspec.Meta(max_length=500)] = ""


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    version: int


class AgentBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    id: str | None = None
    labels: dict[str, Any] = {}


class EvaluateBody(msgspec.Struct, forbid_unknown_fields=True):
    tool: Annotated[str, msgspec.Meta(max_length=300)]
    server: Annotated[str, msgspec.Meta(max_length=200)] = ""
    args: dict[str, Any] = {}
    agent: AgentBody | None = None
    justification: Annotated[str, msgspec.Meta(max_length=4000)] | None = None
    at: datetime | None = None


class Evaluation(msgspec.Struct):
    """What the active policy decides for a call, the rule and approval policy behind it, and why."""

    decision: Literal["allow", "deny", "require_approval"]
    rule: dict[str, Any] | None
    """The matched rule (tool, server, index, action, when, ...); null when no rule matched."""
    approval_policy: dict[str, Any] | None
    """The approval policy's snapshot, as stored on requests, when the decision is require_approval."""
    reason: str
    risk: Literal["low", "medium", "high", "critical"] | None
    message: str | None
    error: str | None
    """Why the rule's condition could not be evaluated; the decision then fails closed."""
    policy_version: int


class SeedCondition(msgspec.Struct):
    type: str
    expression: str
    enabled: bool = True


class SeedRule(msgspec.Struct):
    action: str
    when: str | None = None
    approval_policy: str | None = None
    description: str | None = None


class SeedTool(msgspec.Struct):
    """A tool entry of the active policy in the seed's "Tool Configuration" shape."""

    tool_name: str
    source: str
    approval_required: bool
    approval_policy_id: str | None
    conditions: list[SeedCondition]
    rules: list[SeedRule]


class SeedApprovalPolicy(msgspec.Struct):
    """An approval policy of the active policy in the seed's "Approval Policy" shape."""

    id: str
    name: str
    description: str | None
    approvers: list[str]
    teams: list[str]
    notification_channels: list[str]
    timeout_seconds: int
    quorum: int


class PolicyVersionView(msgspec.Struct, forbid_unknown_fields=True):
    """One immutable version of the organization's policy."""

    id: str
    version: int
    sha256: str
    message: str | None
    is_active: bool
    created_by: str | None
    created_at: str
    rolled_back_from: int | None
    source: str | msgspec.UnsetType = msgspec.UNSET
    """The YAML as applied (on single versions and the active one; lists leave it out)."""
    warnings: list[Any] | msgspec.UnsetType = msgspec.UNSET
    """On apply and rollback: names the policy uses that the directory does not know."""


class PolicyValidation(msgspec.Struct, forbid_unknown_fields=True):
    ok: bool
    sha256: str
    warnings: list[Any]


class PolicyDiff(msgspec.Struct, forbid_unknown_fields=True):
    active_version: int | None
    diff: str
    """A unified diff of the canonical YAML ("" when both mean the same)."""
