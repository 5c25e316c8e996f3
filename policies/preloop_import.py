"""Convert a policy in Preloop's own YAML format into ours, reporting whatever cannot be mapped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from policies.canonical import to_yaml
from policies.errors import PolicyError, PolicyIssue
from policies.loader import parse_policy

_WORKFLOW_LISTS = ("approval_workflows", "workflows")
_TOOL_LISTS = ("tools", "tool_configurations", "tool_configs", "tool_policies", "tool_approval_rules")
_ACTION_MAP = {
    "require_approval": "require_approval",
    "approval": "require_approval",
    "approve": "require_approval",
    "requires_approval": "require_approval",
    "ask": "require_approval",
    "allow": "allow",
    "auto_approve": "allow",
    "pass": "allow",
    "deny": "deny",
    "block": "deny",
    "reject": "deny",
    "decline": "deny",
}
_ARG_ROOTS = re.compile(r"(?<![A-Za-z0-9_.])(arguments|params|parameters|tool_args|input)\s*\.")


def convert_preloop(text: str, source: str = "<preloop>") -> tuple[str, list[str]]:
    """Our YAML for a Preloop policy file, and one warning per thing that did not map exactly."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise PolicyError(
            [
                PolicyIssue(
                    source,
                    line,
                    column,
                    "",
                    None,
                    f"YAML syntax error: {exc}".splitlines()[0],
                    "check indentation and quoting",
                )
            ]
        ) from exc
    if not isinstance(doc, dict):
        raise PolicyError(
            [
                PolicyIssue(
                    source,
                    1,
                    1,
                    "",
                    None,
                    "a Preloop policy is a mapping",
                    "expected approval_workflows: and tools:",
                )
            ]
        )
    converter = _Converter()
    out = converter.convert(doc)
    header = ["# Converted from Preloop's policy format by `preloop policy import-preloop`."]
    if converter.warnings:
        header.append("# Review these points; they did not map exactly:")
        header += [f"#  - {w}" for w in converter.warnings]
    body = to_yaml(out)
    warnings = list(converter.warnings)
    try:
        parse_policy(body, source=source)
    except PolicyError as exc:
        for issue in exc.issues:
            warnings.append(
                f"the converted policy does not validate yet: {issue.message} at {issue.path}"
                + (f" (hint: {issue.hint})" if issue.hint else "")
            )
    return "\n".join(header) + "\n" + body, warnings


class _Converter:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def leftovers(self, item: dict[str, Any], used: set[str], where: str) -> None:
        for key in item:
            if key not in used:
                self.warn(
                    f"{where}: field '{key}' has no equivalent and was not converted "
                    f"(value: {str(item[key])[:80]!r})"
                )

    def convert(self, doc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"version": "1"}
        used: set[str] = {"version"}
        for key in ("name", "description"):
            if isinstance(doc.get(key), str):
                out[key] = doc[key]
                used.add(key)
        if isinstance(doc.get("timezone"), str):
            out["timezone"] = doc["timezone"]
            used.add("timezone")
        workflows: list[dict[str, Any]] = []
        for key in _WORKFLOW_LISTS:
            if key in doc:
                used.add(key)
                workflows += self.workflows(doc[key], key)
        default_workflow = next((w["name"] for w in workflows if w.pop("_default", False)), None)
        for w in workflows:
            w.pop("_default", None)
        out["approval_policies"] = workflows
        tools: list[dict[str, Any]] = []
        for key in _TOOL_LISTS:
            if key in doc:
                used.add(key)
                tools += self.tools(doc[key], key, {w["name"] for w in workflows})
        out["tools"] = tools
        defaults: dict[str, Any] = {}
        if default_workflow:
            defaults["approval_policy"] = default_workflow
        unknown = doc.get("default_action", doc.get("unknown_tools"))
        if unknown is not None:
            used.update({"default_action", "unknown_tools"})
            mapped = _ACTION_MAP.get(str(unknown).lower())
            if mapped is None:
                self.warn(f"default_action {unknown!r} is not known; unknown tools now require approval")
                mapped = "require_approval"
            defaults["unknown_tools"] = mapped
        else:
            defaults["unknown_tools"] = "allow"
            self.warn(
                "Preloop lets tools without a configuration run; kept as defaults.unknown_tools: allow "
                "(consider require_approval or deny)"
            )
        out["defaults"] = defaults
        self.leftovers(doc, used, "top level")
        return out

    def mappings(self, raw: Any, key: str, name_key: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(index, location, item) for each mapping of a list, or of the `{name: {...}}` form."""
        if isinstance(raw, dict):
            raw = [{name_key: name, **(body if isinstance(body, dict) else {})} for name, body in raw.items()]
        if not isinstance(raw, list):
            self.warn(f"{key} is not a list; nothing converted")
            return
        for i, item in enumerate(raw):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                self.warn(f"{where} is not a mapping; skipped")
                continue
            yield i, where, item

    def workflows(self, raw: Any, key: str) -> list[dict[str, Any]]:
        out = []
        for i, where, item in self.mappings(raw, key, "name"):
            used = {"name"}
            name = str(item.get("name") or f"workflow-{i + 1}")
            ap: dict[str, Any] = {"name": name}
            if "description" in item:
                ap["description"] = str(item["description"])
                used.add("description")
            users = [str(u) for u in _as_list(item.get("approver_users"))]
            teams = [str(t) for t in _as_list(item.get("approver_teams"))]
            used.update({"approver_users", "approver_teams"})
            emails = [u for u in users if "@" in u]
            for u in users:
                if "@" not in u:
                    self.warn(
                        f"{where}: approver user {u!r} is not an email; our approvers are emails — "
                        "replace it with the user's email"
                    )
            ap["approvers"] = emails or users
            ap["teams"] = teams
            if "approvals_required" in item:
                used.add("approvals_required")
                ap["quorum"] = _int(item["approvals_required"], 1)
            timeout = item.get("timeout_seconds", item.get("timeout"))
            if timeout is not None:
                used.update({"timeout_seconds", "timeout"})
                ap["timeout"] = timeout
            if "on_timeout" in item or "timeout_action" in item:
                raw_action = str(item.get("on_timeout", item.get("timeout_action"))).lower()
                used.update({"on_timeout", "timeout_action"})
                ap["on_timeout"] = "approve" if raw_action in ("approve", "approved", "allow") else "decline"
            channels = item.get("notification_channels", item.get("channels"))
            if channels is not None:
                used.update({"notification_channels", "channels"})
                known = {"web", "push", "email", "slack", "mattermost", "webhook"}
                mapped = []
                for channel in _as_list(channels):
                    name_c = {"mobile": "push", "mobile_app": "push", "dashboard": "web"}.get(
                        str(channel), str(channel)
                    )
                    if name_c in known:
                        mapped.append(name_c)
                    else:
                        self.warn(
                            f"{where}: notification channel {channel!r} has no equivalent; "
                            "dropped from channels"
                        )
                ap["channels"] = mapped or ["web"]
            esc_users = [str(u) for u in _as_list(item.get("escalation_users"))]
            esc_teams = [str(t) for t in _as_list(item.get("escalation_teams"))]
            used.update({"escalation_users", "escalation_teams"})
            if esc_users or esc_teams:
                after = item.get(
                    "escalation_after_seconds",
                    item.get("escalation_timeout_seconds", item.get("escalation_after")),
                )
                used.update({"escalation_after_seconds", "escalation_timeout_seconds", "escalation_after"})
                if after is None:
                    base = _int(timeout, 3600) if timeout is not None else 3600
                    after = max(1, base // 2)
                    self.warn(
                        f"{where}: escalation_users has no delay; escalating after {after}s "
                        "(half the timeout) — adjust 'after'"
                    )
                ap["escalation"] = [{"after": after, "to": esc_users + esc_teams}]
            if item.get("is_default") or item.get("default"):
                ap["_default"] = True
            used.update({"is_default", "default"})
            self.leftovers(item, used, where)
            out.append(ap)
        return out

    def tools(self, raw: Any, key: str, workflow_names: set[str]) -> list[dict[str, Any]]:
        out = []
        for i, where, item in self.mappings(raw, key, "tool_name"):
            used = {"tool_name", "name"}
            name = item.get("tool_name", item.get("name"))
            if not name:
                self.warn(f"{where}: no tool_name; skipped")
                self.leftovers(item, used, where)
                continue
            tool: dict[str, Any] = {"name": str(name)}
            where = f"{key}[{i}] ({name})"
            server = item.get("server", item.get("mcp_server", item.get("server_name")))
            used.update({"server", "mcp_server", "server_name"})
            if server:
                tool["server"] = str(server)
            if "justification" in item:
                used.add("justification")
                tool["justification"] = str(item["justification"])
            if "description" in item:
                used.add("description")
                tool["description"] = str(item["description"])
            workflow = item.get("approval_workflow", item.get("approval_workflow_name", item.get("workflow")))
            used.update({"approval_workflow", "approval_workflow_name", "workflow"})
            if workflow is not None and str(workflow) not in workflow_names:
                self.warn(f"{where}: approval workflow {workflow!r} is not defined in this file")
            required = item.get("approval_required", item.get("requires_approval", item.get("enabled", True)))
            used.update({"approval_required", "requires_approval", "enabled"})
            rules = []
            for j, cond in enumerate(_as_list(item.get("conditions"))):
                rule = self.condition(cond, f"{where}.conditions[{j}]", workflow)
                if rule is not None:
                    rules.append(rule)
            used.add("conditions")
            if item.get("conditions") and not rules:
                self.warn(
                    f"{where}: no condition could be converted; the tool requires approval for every call"
                )
            if not rules:
                if required is False:
                    rules.append({"action": "allow"})
                else:
                    rule = {"action": "require_approval"}
                    if workflow is not None:
                        rule["approval_policy"] = str(workflow)
                    rules.append(rule)
            tool["rules"] = rules
            self.leftovers(item, used, where)
            out.append(tool)
        return out

    def condition(self, cond: Any, where: str, workflow: Any) -> dict[str, Any] | None:
        if isinstance(cond, str):
            cond = {"expression": cond}
        if not isinstance(cond, dict):
            self.warn(f"{where}: not a mapping; skipped")
            return None
        used = {"expression", "action", "description", "approval_workflow"}
        rule: dict[str, Any] = {}
        expression = cond.get("expression")
        if expression is not None:
            text = str(expression)
            rewritten = _ARG_ROOTS.sub("args.", text)
            if rewritten != text:
                self.warn(f"{where}: rewrote {text!r} to {rewritten!r} (our arguments variable is 'args')")
            rule["when"] = rewritten
        raw_action = str(cond.get("action", "require_approval")).lower()
        action = _ACTION_MAP.get(raw_action)
        if action is None:
            self.warn(
                f"{where}: action {raw_action!r} has no equivalent; using require_approval (fail closed)"
            )
            action = "require_approval"
        rule["action"] = action
        wf = cond.get("approval_workflow", workflow)
        if action == "require_approval" and wf is not None:
            rule["approval_policy"] = str(wf)
        if "description" in cond:
            rule["description"] = str(cond["description"])
        self.leftovers(cond, used, where)
        return rule


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [value]


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
