"""The Preloop policy language: load YAML, check it strictly, decide tool calls."""

from policies.canonical import arguments_hash, export_policy
from policies.engine import Policy
from policies.errors import PolicyError, PolicyIssue
from policies.loader import load_policy, load_policy_file
from policies.model import (
    AgentInfo,
    ApprovalPolicy,
    CallContext,
    Decision,
    Defaults,
    EscalationLevel,
    PolicyTestCase,
    Rule,
    RuleInfo,
    ServerConfig,
    ToolEntry,
)

__all__ = [
    "AgentInfo",
    "ApprovalPolicy",
    "CallContext",
    "Decision",
    "Defaults",
    "EscalationLevel",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicyTestCase",
    "Rule",
    "RuleInfo",
    "ServerConfig",
    "ToolEntry",
    "arguments_hash",
    "export_policy",
    "load_policy",
    "load_policy_file",
]
