"""Immutable values of the policy language: servers, approval policies, rules, calls, decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Action = Literal["allow", "deny", "require_approval"]
Justification = Literal["required", "optional", "none"]
Risk = Literal["low", "medium", "high", "critical"]

ACTIONS: tuple[str, ...] = ("allow", "deny", "require_approval")
JUSTIFICATIONS: tuple[str, ...] = ("required", "optional", "none")
RISKS: tuple[str, ...] = ("low", "medium", "high", "critical")
ON_TIMEOUT: tuple[str, ...] = ("decline", "approve")
DECLINE_MODES: tuple[str, ...] = ("immediate", "when_quorum_unreachable")
CHANNELS: tuple[str, ...] = ("web", "push", "email", "slack", "mattermost", "webhook")
DEFAULT_CHANNELS: tuple[str, ...] = ("web", "push", "email")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """An upstream MCP server; ``${ENV}`` references stay unexpanded (the gateway expands them)."""

    name: str
    command: list[str] | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    prefix: str | None = None

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.command is not None:
            out["command"] = list(self.command)
        if self.url is not None:
            out["url"] = self.url
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.env:
            out["env"] = dict(self.env)
        if self.prefix is not None:
            out["prefix"] = self.prefix
        return out


@dataclass(frozen=True, slots=True)
class EscalationLevel:
    """After ``after_seconds`` from request creation, these users and teams are asked too."""

    after_seconds: int
    users: list[str] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"after_seconds": self.after_seconds, "users": list(self.users), "teams": list(self.teams)}


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """Who approves, how many must, how long they have, and what happens then."""

    name: str
    approvers: list[str] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)
    quorum: int = 1
    timeout_seconds: int = 3600
    on_timeout: Literal["decline", "approve"] = "decline"
    escalation: list[EscalationLevel] = field(default_factory=list)
    channels: list[str] = field(default_factory=lambda: list(DEFAULT_CHANNELS))
    require_passkey: bool = False
    decline_mode: Literal["immediate", "when_quorum_unreachable"] = "immediate"
    require_decline_reason: bool = False
    max_grant_seconds: int = 0
    description: str | None = None
    decline_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The snapshot stored on approval requests (docs/architecture.md)."""
        return {
            "name": self.name,
            "approvers": list(self.approvers),
            "teams": list(self.teams),
            "quorum": self.quorum,
            "timeout_seconds": self.timeout_seconds,
            "on_timeout": self.on_timeout,
            "escalation": [level.to_dict() for level in self.escalation],
            "channels": list(self.channels),
            "require_passkey": self.require_passkey,
            "decline_mode": self.decline_mode,
            "require_decline_reason": self.require_decline_reason,
            "max_grant_seconds": self.max_grant_seconds,
            "description": self.description,
            "decline_reasons": list(self.decline_reasons),
        }


@dataclass(frozen=True, slots=True)
class Rule:
    """One ordered rule of a tool entry; no ``when`` means it always matches."""

    action: Action
    when: str | None = None
    approval_policy: str | None = None
    message: str | None = None
    description: str | None = None
    risk: Risk | None = None


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """A tool pattern (exact name or fnmatch glob) with its ordered rules."""

    name: str
    rules: list[Rule]
    server: str | None = None
    justification: Justification | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceRule:
    """Who may read which resources: a URI glob (fnmatch: `*`, `?`, `[...]`) and what happens on `resources/read`."""

    uri: str
    action: Action
    approval_policy: str | None = None
    message: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "action": self.action}
        for key in ("approval_policy", "message", "description"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True, slots=True)
class Defaults:
    """What happens when no tool entry, or no rule of the matching entry, applies."""

    unknown_tools: Action = "require_approval"
    no_match: Action = "allow"
    approval_policy: str | None = None
    justification: Justification = "optional"


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """The calling agent as the hub knows it (from its API key)."""

    name: str = ""
    id: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicyTestCase:
    """One case of a policy's ``tests:`` section."""

    tool: str
    expect: Action
    args: dict[str, Any] = field(default_factory=dict)
    server: str | None = None
    agent: AgentInfo | None = None
    at: datetime | None = None
    justification: str | None = None
    rule: int | str | None = None
    approval_policy: str | None = None
    name: str | None = None
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        out["tool"] = self.tool
        if self.server is not None:
            out["server"] = self.server
        out["args"] = self.args
        if self.agent is not None:
            agent: dict[str, Any] = {"name": self.agent.name}
            if self.agent.id:
                agent["id"] = self.agent.id
            if self.agent.labels:
                agent["labels"] = dict(self.agent.labels)
            out["agent"] = agent
        if self.at is not None:
            out["at"] = self.at.isoformat()
        if self.justification is not None:
            out["justification"] = self.justification
        out["expect"] = self.expect
        if self.rule is not None:
            out["rule"] = self.rule
        if self.approval_policy is not None:
            out["approval_policy"] = self.approval_policy
        return out


@dataclass(frozen=True, slots=True)
class CallContext:
    """One tool call to decide; ``now`` is the caller's clock (the engine never reads one)."""

    tool: str
    server: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    agent: AgentInfo | None = None
    justification: str | None = None
    now: datetime | None = None


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """Which rule decided: the tool pattern, the rule's 0-based index and its texts."""

    tool: str
    index: int
    action: Action
    server: str | None = None
    when: str | None = None
    description: str | None = None
    risk: Risk | None = None
    message: str | None = None
    approval_policy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "server": self.server,
            "index": self.index,
            "action": self.action,
            "when": self.when,
            "description": self.description,
            "risk": self.risk,
            "message": self.message,
            "approval_policy": self.approval_policy,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one call, with the rule and approval policy behind it."""

    action: Action
    reason: str
    rule: RuleInfo | None = None
    approval_policy: ApprovalPolicy | None = None
    risk: Risk | None = None
    message: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.action,
            "rule": self.rule.to_dict() if self.rule is not None else None,
            "approval_policy": self.approval_policy.to_dict() if self.approval_policy is not None else None,
            "reason": self.reason,
            "risk": self.risk,
            "message": self.message,
            "error": self.error,
        }


@dataclass
class ParsedPolicy:
    """The checked document before compilation into a :class:`~policies.engine.Policy`."""

    version: str = "1"
    name: str | None = None
    description: str | None = None
    timezone: str = "UTC"
    servers: list[ServerConfig] = field(default_factory=list)
    approval_policies: list[ApprovalPolicy] = field(default_factory=list)
    tools: list[ToolEntry] = field(default_factory=list)
    resources: list[ResourceRule] = field(default_factory=list)
    defaults: Defaults = field(default_factory=Defaults)
    tests: list[PolicyTestCase] = field(default_factory=list)
    programs: dict[tuple[int, int], Any] = field(default_factory=dict)
