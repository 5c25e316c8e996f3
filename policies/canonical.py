"""Canonical forms: the argument hash, the normalised policy document, its hash and exports."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from policies.engine import Policy
    from policies.model import ApprovalPolicy, Rule, ToolEntry


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def arguments_hash(args: Any) -> str:
    """sha256 hex of the canonical JSON of a call's arguments (the approval binding)."""
    return hashlib.sha256(canonical_json(args).encode("utf-8")).hexdigest()


def version_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


def _approval_policy(ap: ApprovalPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {"name": ap.name}
    if ap.description is not None:
        out["description"] = ap.description
    out.update(
        {
            "approvers": list(ap.approvers),
            "teams": list(ap.teams),
            "quorum": ap.quorum,
            "timeout": ap.timeout_seconds,
            "on_timeout": ap.on_timeout,
            "escalation": [
                {"after": level.after_seconds, "to": [*level.users, *level.teams]} for level in ap.escalation
            ],
            "channels": list(ap.channels),
            "require_passkey": ap.require_passkey,
            "decline_mode": ap.decline_mode,
            "require_decline_reason": ap.require_decline_reason,
            "max_grant": ap.max_grant_seconds,
        }
    )
    if ap.decline_reasons:  # only when set, so existing policies keep their canonical form
        out["decline_reasons"] = list(ap.decline_reasons)
    return out


def _rule(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.when is not None:
        out["when"] = rule.when
    out["action"] = rule.action
    for key in ("approval_policy", "message", "description", "risk"):
        value = getattr(rule, key)
        if value is not None:
            out[key] = value
    return out


def _tool(entry: ToolEntry, default_justification: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.name}
    if entry.server is not None:
        out["server"] = entry.server
    if entry.description is not None:
        out["description"] = entry.description
    out["justification"] = entry.justification or default_justification
    out["rules"] = [_rule(rule) for rule in entry.rules]
    return out


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The policy with every default written out; loading it again gives the same policy."""
    out: dict[str, Any] = {"version": policy.version}
    if policy.name is not None:
        out["name"] = policy.name
    if policy.description is not None:
        out["description"] = policy.description
    defaults = policy.defaults
    default_ap = policy.default_approval_policy
    out.update(
        {
            "timezone": policy.timezone,
            "servers": [server.to_dict() for server in policy.servers],
            "approval_policies": [_approval_policy(ap) for ap in policy.approval_policies],
            "tools": [_tool(entry, defaults.justification) for entry in policy.tools],
            "defaults": {
                "unknown_tools": defaults.unknown_tools,
                "no_match": defaults.no_match,
                "justification": defaults.justification,
                **({"approval_policy": default_ap.name} if default_ap is not None else {}),
            },
            "tests": [case.to_dict() for case in policy.tests],
        }
    )
    if policy.resources:  # absent when unused, so older policies keep their hash
        out["resources"] = [rule.to_dict() for rule in policy.resources]
    return out


class _Dumper(yaml.SafeDumper):
    """Block-style YAML that keeps key order and never emits aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def export_policy(policy: Policy, fmt: str = "yaml") -> str:
    """The canonical document as ``yaml`` or ``json`` text."""
    if fmt == "json":
        return to_json(policy.to_dict())
    if fmt == "yaml":
        return to_yaml(policy.to_dict())
    raise ValueError(f"unknown export format {fmt!r}; use yaml or json")
