"""Request bodies of the approvals API."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Literal

import msgspec

# Lengths match the columns they land in, so a long value is a 400 naming the field, never a 500.
Tool = Annotated[str, msgspec.Meta(max_length=300)]
Server = Annotated[str, msgspec.Meta(max_length=200)]
Hash = Annotated[str, msgspec.Meta(max_length=128)]
Reason = Annotated[str, msgspec.Meta(max_length=2000)]
Justification = Annotated[str, msgspec.Meta(max_length=4000)]
RequestId = Annotated[str, msgspec.Meta(max_length=64)]


@dataclass(frozen=True)
class HistoryFilter:
    """What the history (its list and its export) is narrowed to. Each field is a query parameter of
    both REST operations; the console reads it from its filter form and the CLI sends it as is."""

    start_date: str | None = None
    """First day (YYYY-MM-DD) or instant (ISO datetime), inclusive."""
    end_date: str | None = None
    """Last day, inclusive (a bare date includes the whole day), or an instant, exclusive."""
    tool: str | None = None
    """A tool name; `*` is a wildcard."""
    approver: str | None = None
    """Only requests this person (by email) voted on."""
    status: str | None = None
    """Statuses, comma-separated; `pending` alone is the caller's inbox."""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> HistoryFilter:
        """Empty fields (a form sent with blanks) narrow nothing."""
        return cls(**{f.name: query.get(f.name) or None for f in fields(cls)})

    def as_query(self) -> dict[str, str]:
        """The fields that narrow something, as query parameters."""
        return {name: value for name, value in asdict(self).items() if value}


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


# --- answers ----------------------------------------------------------------------------------------
# The service builds plain dicts (cheap to cache and stream); controllers convert them to these at the
# boundary, so the OpenAPI document carries every field and a missing one fails loudly, not silently.

JsonObject = dict[str, Any]


class AgentRef(msgspec.Struct):
    key_id: str | None
    name: str | None


class UserRef(msgspec.Struct):
    id: str | None
    email: str | None


class VoteView(msgspec.Struct):
    user: UserRef
    decision: Literal["approve", "decline"]
    reason: str | None
    channel: str | None
    created_at: str | None
    passkey_confirmed: bool


class Quorum(msgspec.Struct):
    required: int
    approvals: int
    declines: int


class RedFlagView(msgspec.Struct):
    code: str
    why: str


class Approval(msgspec.Struct, forbid_unknown_fields=True):
    """One approval request as the API shows it. The optional fields appear where they apply:
    `red_flags` on one request and inbox items, the voting fields on inbox items (status=pending),
    `attached` on POST /approvals."""

    id: str
    status: str
    tool: str
    server: str
    arguments: JsonObject
    arguments_to_run: JsonObject
    """The arguments the call will run with: what the agent sent plus the tool schema's defaults."""
    arguments_hash: str
    agent: AgentRef
    requester: UserRef | None
    justification: str | None
    policy_version: int | None
    rule: JsonObject | None
    approval_policy: JsonObject | None
    risk: str | None
    reason: str | None
    created_at: str | None
    expires_at: str | None
    escalation_level: int | None
    next_escalation_at: str | None
    decided_at: str | None
    outcome: JsonObject | None
    """The verdict once decided: kind (approved/declined/expired/cancelled), by, reason."""
    grant_seconds: int | None
    executed_at: str | None
    execution: JsonObject | None
    votes: list[VoteView]
    quorum: Quorum
    red_flags: list[RedFlagView] | msgspec.UnsetType = msgspec.UNSET
    can_vote: bool | msgspec.UnsetType = msgspec.UNSET
    why_not: str | msgspec.UnsetType | None = msgspec.UNSET
    my_vote: str | msgspec.UnsetType | None = msgspec.UNSET
    attached: bool | msgspec.UnsetType = msgspec.UNSET
    """On POST /approvals: true when the same call was already pending and this answer is that request."""


class GrantView(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    request_id: str
    tool: str
    server: str
    arguments_hash: str
    agent_key_id: str | None
    granted_by: str | None
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    uses: int
    active: bool


class Granted(msgspec.Struct, forbid_unknown_fields=True):
    """POST /approvals when a time-boxed grant already covers the call: run it, nobody is asked."""

    status: Literal["granted"]
    grant: GrantView
    id: str


class Outcome(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    status: str
    outcome: JsonObject | None
    execution: JsonObject | None


class Decisions(msgspec.Struct, forbid_unknown_fields=True):
    """The long-poll's answer: the decided requests, the ids still pending, the ids not found."""

    decided: list[Approval]
    pending: list[str]
    unknown: list[str]


class BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    ok: bool
    status: str | msgspec.UnsetType = msgspec.UNSET
    request: Approval | msgspec.UnsetType = msgspec.UNSET
    error: JsonObject | msgspec.UnsetType = msgspec.UNSET
    """The error envelope's inner object, when `ok` is false."""


class BatchResult(msgspec.Struct, forbid_unknown_fields=True):
    results: list[BatchItem]
    ok: int
    failed: int
