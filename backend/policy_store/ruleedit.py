"""Edits of a policy document's tool rules, as data: read the rules, move one, change or insert one.

The document is read with `yaml.safe_load` and written back with `yaml.safe_dump` in the keys'
original order, so every value survives the round trip; YAML comments and quoting style do not
(the console says so before it rewrites a draft that has comments).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from backend.errors import ValidationFailed

SHORTHAND = ("action", "when", "approval_policy", "message", "risk")
_COMMENT = re.compile(r"(^|\s)#")


def load(source: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise ValidationFailed(f"the draft is not valid YAML: {exc}", code="invalid_policy") from exc
    if not isinstance(doc, dict):
        raise ValidationFailed("the draft must be a YAML mapping with a 'tools:' list", code="invalid_policy")
    return doc


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


def has_comments(source: str) -> bool:
    """Whether rewriting the draft would drop comments (a `#` starting a comment on some line)."""
    return any(_COMMENT.search(line) for line in source.splitlines())


def _entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    tools = doc.get("tools")
    if not isinstance(tools, list):
        raise ValidationFailed("the draft has no 'tools:' list", code="invalid_policy")
    return [entry if isinstance(entry, dict) else {} for entry in tools]


def rules_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An entry's rules; a blanket `action:` entry is one rule."""
    if isinstance(entry.get("rules"), list):
        return [rule if isinstance(rule, dict) else {} for rule in entry["rules"]]
    return [{key: entry[key] for key in SHORTHAND if key in entry}] if any(k in entry for k in SHORTHAND) else []


def _as_rules(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn a blanket entry into the `rules:` form (in place) and return its rule list."""
    if not isinstance(entry.get("rules"), list):
        rule = {key: entry.pop(key) for key in SHORTHAND if key in entry}
        entry["rules"] = [rule]
    rules: list[dict[str, Any]] = entry["rules"]
    return rules


def view(source: str) -> list[dict[str, Any]]:
    """Each tool entry with its ordered rules, for the structured view."""
    out = []
    for index, entry in enumerate(_entries(load(source))):
        out.append({
            "index": index, "name": str(entry.get("name", "")), "server": entry.get("server"),
            "rules": [
                {"index": j, "action": str(rule.get("action", "")), "when": rule.get("when"),
                 "approval_policy": rule.get("approval_policy"), "description": rule.get("description"),
                 "message": rule.get("message")}
                for j, rule in enumerate(rules_of(entry))
            ],
        })
    return out


def move_rule(source: str, entry_index: int, rule_index: int, to_index: int) -> str:
    """The draft with one rule moved to another position of the same tool entry."""
    doc = load(source)
    entries = _entries(doc)
    if not 0 <= entry_index < len(entries):
        raise ValidationFailed(f"there is no tool entry {entry_index + 1}", detail={"field": "entry"})
    rules = _as_rules(entries[entry_index])
    if not (0 <= rule_index < len(rules) and 0 <= to_index < len(rules)):
        raise ValidationFailed(
            f"tool {entries[entry_index].get('name')!r} has rules 1 to {len(rules)}; cannot move rule "
            f"{rule_index + 1} to position {to_index + 1}", detail={"field": "rule"},
        )
    rules.insert(to_index, rules.pop(rule_index))
    return dump(doc)


def find_entry(doc: dict[str, Any], tool: str, server: str | None) -> dict[str, Any] | None:
    for entry in _entries(doc):
        if str(entry.get("name", "")) == tool and (entry.get("server") or None) == (server or None):
            return entry
    return None


def replace_rule(source: str, tool: str, server: str | None, index: int, rule: dict[str, Any]) -> str:
    doc = load(source)
    entry = find_entry(doc, tool, server)
    if entry is None:
        raise ValidationFailed(f"the policy has no tool entry {tool!r}", detail={"tool": tool})
    _as_rules(entry)[index] = rule
    return dump(doc)


def insert_rule(source: str, tool: str, server: str | None, index: int, rule: dict[str, Any]) -> str:
    doc = load(source)
    entry = find_entry(doc, tool, server)
    if entry is None:
        raise ValidationFailed(f"the policy has no tool entry {tool!r}", detail={"tool": tool})
    _as_rules(entry).insert(index, rule)
    return dump(doc)


def rule_at(source: str, tool: str, server: str | None, index: int) -> dict[str, Any] | None:
    doc = load(source)
    entry = find_entry(doc, tool, server)
    rules = rules_of(entry) if entry is not None else []
    return dict(rules[index]) if 0 <= index < len(rules) else None


def approval_policy_names(source: str) -> list[str]:
    """The draft's approval policy names, in order; none while the draft is unreadable."""
    try:
        doc = load(source)
    except ValidationFailed:
        return []
    items = doc.get("approval_policies")
    return [str(item["name"]) for item in items if isinstance(item, dict) and "name" in item] if isinstance(
        items, list) else []


def set_quorum(source: str, name: str, quorum: int) -> str:
    """The draft with approval policy `name`'s quorum set (the engine's check then says whether it is reachable)."""
    if quorum < 1:
        raise ValidationFailed("a quorum is at least 1", detail={"field": "quorum"})
    doc = load(source)
    items = doc.get("approval_policies")
    found = next((item for item in items if isinstance(item, dict) and item.get("name") == name), None) if isinstance(
        items, list) else None
    if found is None:
        raise ValidationFailed(f"the draft has no approval policy {name!r}", detail={"field": "approval_policy"})
    found["quorum"] = quorum
    return dump(doc)
