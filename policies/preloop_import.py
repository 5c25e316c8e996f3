"""Convert a policy in Preloop's format (YAML, or its JSON tool configurations and approval policies) into ours.

It never fails open: whatever cannot be mapped and could change a decision fails the import, with
one issue per fault; cosmetic leftovers (and non-emails as approvers, which only fail closed) are
warnings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from policies.canonical import to_yaml
from policies.durations import parse_duration
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
# Fields that never change a decision: dropped with a warning. Any other unknown field fails the import.
_COSMETIC = frozenset({
    "priority", "tags", "notes", "note", "comment", "comments", "created_at", "updated_at", "created_by",
    "metadata", "labels", "owner", "category", "icon", "color", "display_name", "organization_id", "org_id",
    "retention_days",
})
_CEL_TYPES = frozenset({"cel", "argument", "arguments", "expression"})
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
    if isinstance(doc, list) or (isinstance(doc, dict) and _json_shape(doc) is not None):
        doc = _from_json_shapes(doc if isinstance(doc, list) else [doc])
    if not isinstance(doc, dict):
        raise PolicyError(
            [
                PolicyIssue(
                    source,
                    1,
                    1,
                    "",
                    None,
                    "a Preloop policy is a mapping, or tool configuration / approval policy objects",
                    "expected approval_workflows: and tools:, or objects with tool_name or approvers",
                )
            ]
        )
    converter = _Converter(source)
    out = converter.convert(doc)
    if converter.errors:
        raise PolicyError(converter.errors)
    header = ["# Converted from Preloop's policy format by `preloop policy import-preloop`."]
    if converter.warnings:
        header.append("# Review these points; they do not change any decision:")
        header += [f"#  - {w}" for w in converter.warnings]
    body = to_yaml(out)
    try:
        parse_policy(body, source=source)
    except PolicyError as exc:
        raise PolicyError([
            PolicyIssue(source, 1, 1, issue.path, issue.value,
                        f"the converted policy does not validate: {issue.message}", issue.hint)
            for issue in exc.issues
        ]) from exc
    return "\n".join(header) + "\n" + body, list(converter.warnings)


def _json_shape(item: Any) -> str | None:
    """'tool' for a tool configuration object, 'policy' for an approval policy object, else None."""
    if not isinstance(item, dict):
        return None
    if "tool_name" in item:
        return "tool"
    if "name" in item and ({"approvers", "teams", "quorum", "timeout_seconds"} & item.keys()):
        return "policy"
    return None


def _from_json_shapes(items: list[Any]) -> Any:
    """The seed's JSON objects (one or a list, mixed) as a Preloop policy document."""
    shapes = [_json_shape(item) for item in items]
    if not items or None in shapes:
        return items  # not the JSON shapes: reported as not a mapping
    return {
        "approval_workflows": [item for item, shape in zip(items, shapes, strict=True) if shape == "policy"],
        "tools": [item for item, shape in zip(items, shapes, strict=True) if shape == "tool"],
    }


class _Converter:
    def __init__(self, source: str = "<preloop>") -> None:
        self.source = source
        self.warnings: list[str] = []
        self.errors: list[PolicyIssue] = []
        self.policy_ids: dict[str, str] = {}

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def fail(self, where: str, message: str, hint: str = "", value: Any = None) -> None:
        self.errors.append(PolicyIssue(self.source, 1, 1, where, value, message, hint))

    def leftovers(self, item: dict[str, Any], used: set[str], where: str) -> None:
        for key in item:
            if key in used:
                continue
            if key in _COSMETIC:
                self.warn(f"{where}: field '{key}' does not affect decisions and was not converted")
            else:
                self.fail(where, f"field '{key}' has no equivalent and could change a decision",
                          "remove it, or express it as a rule condition (CEL) by hand", str(item[key])[:80])

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
        used.update({"default_action", "unknown_tools", "defaults"})
        section = doc.get("defaults")
        if section is not None:
            unknown = self.defaults(section, defaults, {w["name"] for w in workflows}, unknown)
        if unknown is not None:
            mapped = _ACTION_MAP.get(str(unknown).lower())
            if mapped is None:
                self.fail("defaults.unknown_tools", f"{unknown!r} is not an action",
                          "use allow, deny or require_approval", unknown)
            else:
                defaults["unknown_tools"] = mapped
        else:
            defaults["unknown_tools"] = "allow"
            self.warn(
                "no defaults: Preloop lets tools without a configuration run, so defaults.unknown_tools is allow "
                "(consider require_approval or deny)"
            )
        if defaults.get("unknown_tools") == "require_approval" and not defaults.get("approval_policy") and workflows:
            defaults["approval_policy"] = workflows[0]["name"]
        out["defaults"] = defaults
        self.leftovers(doc, used, "top level")
        return out

    def defaults(self, section: Any, defaults: dict[str, Any], workflow_names: set[str], unknown: Any) -> Any:
        """Preloop's `defaults:` section; returns the unknown-tools action it asks for."""
        if not isinstance(section, dict):
            self.fail("defaults", "must be a mapping", "e.g. defaults: {unknown_tools: deny}", section)
            return unknown
        used = {"unknown_tools", "default_action", "default_approval_workflow", "default_workflow",
                "require_approval_for_new_tools"}
        unknown = section.get("unknown_tools", section.get("default_action", unknown))
        new_tools = section.get("require_approval_for_new_tools")
        if new_tools is True:
            if unknown is not None and _ACTION_MAP.get(str(unknown).lower()) == "allow":
                self.fail("defaults", "require_approval_for_new_tools: true contradicts unknown_tools: allow",
                          "keep one of them")
            elif unknown is None or _ACTION_MAP.get(str(unknown).lower()) != "deny":
                unknown = "require_approval"
        elif new_tools not in (None, False):
            self.fail("defaults.require_approval_for_new_tools", "must be true or false", value=new_tools)
        workflow = section.get("default_approval_workflow", section.get("default_workflow"))
        if workflow is not None:
            name = self.policy_ids.get(str(workflow), str(workflow))
            if name not in workflow_names:
                self.fail("defaults.default_approval_workflow", f"approval workflow {workflow!r} is not defined",
                          f"defined: {', '.join(sorted(workflow_names)) or 'none'}", workflow)
            else:
                defaults["approval_policy"] = name
        self.leftovers(section, used, "defaults")
        return unknown

    def mappings(self, raw: Any, key: str, name_key: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(index, location, item) for each mapping of a list, or of the `{name: {...}}` form."""
        if isinstance(raw, dict):
            raw = [{name_key: name, **(body if isinstance(body, dict) else {})} for name, body in raw.items()]
        if not isinstance(raw, list):
            self.fail(key, "is not a list", "write it as a list of mappings", raw)
            return
        for i, item in enumerate(raw):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                self.fail(where, "is not a mapping", value=item)
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
            if "id" in item:
                self.policy_ids[str(item["id"])] = name
                used.add("id")
            users = [str(u) for u in _as_list(item.get("approver_users", item.get("approvers")))]
            teams = [str(t) for t in _as_list(item.get("approver_teams", item.get("teams")))]
            used.update({"approver_users", "approver_teams", "approvers", "teams"})
            emails = [u for u in users if "@" in u]
            for u in users:
                if "@" not in u:
                    # A Preloop user id names someone we cannot identify: guessing would change who decides.
                    self.fail(f"{where}.approvers", f"approver {u!r} is not an email (a Preloop user id?)",
                              "replace it with the person's email; put team names under teams", u)
            ap["approvers"] = emails
            ap["teams"] = teams
            quorum = item.get("approvals_required", item.get("quorum"))
            used.update({"approvals_required", "quorum"})
            if quorum is not None:
                if not isinstance(quorum, int) or isinstance(quorum, bool) or quorum < 1:
                    self.fail(f"{where}.quorum", "must be a whole number of at least 1", value=quorum)
                else:
                    ap["quorum"] = quorum
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
            self.escalation(item, where, ap, used)
            if item.get("is_default") or item.get("default"):
                ap["_default"] = True
            used.update({"is_default", "default"})
            self.leftovers(item, used, where)
            out.append(ap)
        return out

    def escalation(self, item: dict[str, Any], where: str, ap: dict[str, Any], used: set[str]) -> None:
        """Flat `escalation_users`/`escalation_teams` or the nested `escalation: {enabled, escalate_to, ...}`."""
        nested = item.get("escalation")
        used.update({"escalation", "escalation_users", "escalation_teams", "escalation_after_seconds",
                     "escalation_timeout_seconds", "escalation_after"})
        after: Any = item.get("escalation_after_seconds",
                              item.get("escalation_timeout_seconds", item.get("escalation_after")))
        to = [str(u) for u in _as_list(item.get("escalation_users"))] + [
            str(t) for t in _as_list(item.get("escalation_teams"))
        ]
        if isinstance(nested, dict):
            if nested.get("enabled", True) is False:
                return
            to += [str(u) for u in _as_list(nested.get("escalate_to", nested.get("to")))]
            after = nested.get("escalation_delay", nested.get("after", after))
            self.leftovers(nested, {"enabled", "escalate_to", "to", "escalation_delay", "after"}, f"{where}.escalation")
        elif nested is not None:
            self.fail(f"{where}.escalation", "must be a mapping", "e.g. {escalate_to: [cto], escalation_delay: 600}")
            return
        if not to:
            return
        if after is None:
            # Preloop escalates when the timeout is reached and gives the escalated approvers one more timeout.
            try:
                base = parse_duration(ap.get("timeout", 3600))
            except ValueError as exc:
                self.fail(f"{where}.timeout", str(exc), value=ap.get("timeout"))
                return
            after = base
            ap["timeout"] = 2 * base
            self.warn(f"{where}: escalation without a delay escalates at the timeout ({base}s) and extends the "
                      f"request by one timeout (timeout {2 * base}s), as Preloop does")
        ap["escalation"] = [{"after": after, "to": to}]

    def tools(self, raw: Any, key: str, workflow_names: set[str]) -> list[dict[str, Any]]:
        out = []
        for i, where, item in self.mappings(raw, key, "tool_name"):
            used = {"tool_name", "name", "tool"}
            name = item.get("tool_name", item.get("name", item.get("tool")))
            if not name:
                self.fail(where, "has no tool_name", "every tool configuration names its tool")
                continue
            tool: dict[str, Any] = {"name": str(name)}
            where = f"{key}[{i}] ({name})"
            server = item.get("source", item.get("server", item.get("mcp_server", item.get("server_name"))))
            used.update({"source", "server", "mcp_server", "server_name"})
            if server:
                tool["server"] = str(server)
            if "justification" in item:
                used.add("justification")
                tool["justification"] = str(item["justification"])
            if "description" in item:
                used.add("description")
                tool["description"] = str(item["description"])
            workflow = item.get("approval_workflow", item.get("approval_workflow_name", item.get("workflow")))
            policy_id = item.get("approval_policy_id")
            used.update({"approval_workflow", "approval_workflow_name", "workflow", "approval_policy_id"})
            if workflow is None and policy_id is not None:
                workflow = self.policy_ids.get(str(policy_id), policy_id)
            if workflow is not None and str(workflow) not in workflow_names:
                self.fail(where, f"approval workflow {workflow!r} is not defined",
                          f"defined: {', '.join(sorted(workflow_names)) or 'none'}", workflow)
            required = item.get("approval_required", item.get("requires_approval"))
            used.update({"approval_required", "requires_approval", "enabled"})
            if item.get("enabled", True) is False:
                required = False  # a disabled configuration asks for nothing
            if required is None and isinstance(item.get("approval"), str):
                used.add("approval")
                required = {"required": True, "none": False, "never": False, "not_required": False}.get(
                    str(item["approval"]).lower()
                )
                if required is None:
                    self.fail(where, f"approval {item['approval']!r} is not known", "use required or none")
            if required is None:
                required = True
            rules = []
            conditions = _as_list(item.get("conditions"))
            used.add("conditions")
            for j, cond in enumerate(conditions):
                rule = self.condition(cond, f"{where}.conditions[{j}]", workflow)
                if rule is not None:
                    rules.append(rule)
            if required is False:
                if rules:
                    self.warn(f"{where}: approval_required is false, so its conditions never apply; calls run")
                rules = [{"action": "allow"}]
            elif rules:
                if len(rules) > 1:
                    self.warn(f"{where}: its {len(rules)} conditions are tried in order; the first that holds decides")
                rules.append({"action": "allow"})  # no condition holds: approval is not needed, as in Preloop
            else:
                rules = [self.approval_rule(workflow)]  # no (enabled) condition: approval_required alone decides
            tool["rules"] = rules
            self.leftovers(item, used, where)
            out.append(tool)
        return out

    @staticmethod
    def approval_rule(workflow: Any) -> dict[str, Any]:
        rule: dict[str, Any] = {"action": "require_approval"}
        if workflow is not None:
            rule["approval_policy"] = str(workflow)
        return rule

    def condition(self, cond: Any, where: str, workflow: Any) -> dict[str, Any] | None:
        if isinstance(cond, str):
            cond = {"expression": cond}
        if not isinstance(cond, dict):
            self.fail(where, "is not a mapping", "write {type: cel, expression: ...}", cond)
            return None
        used = {"expression", "action", "description", "approval_workflow", "type", "condition_type", "enabled"}
        self.leftovers(cond, used, where)
        if cond.get("enabled", True) is False:
            self.warn(f"{where}: disabled; not converted")
            return None
        kind = str(cond.get("condition_type", cond.get("type", "cel"))).lower()
        if kind not in _CEL_TYPES:
            self.fail(where, f"condition type {kind!r} has no equivalent (only CEL expressions map)",
                      "rewrite it as a CEL expression over args", kind)
            return None
        expression = cond.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            self.fail(where, "has no expression", "add expression: a CEL condition over args")
            return None
        rewritten = _ARG_ROOTS.sub("args.", expression)
        if rewritten != expression:
            self.warn(f"{where}: rewrote {expression!r} to {rewritten!r} (our arguments variable is 'args')")
        rule: dict[str, Any] = {"when": rewritten}
        raw_action = str(cond.get("action", "require_approval")).lower()
        action = _ACTION_MAP.get(raw_action)
        if action is None:
            self.fail(where, f"action {raw_action!r} has no equivalent", "use allow, deny or require_approval",
                      raw_action)
            return None
        rule["action"] = action
        wf = cond.get("approval_workflow", workflow)
        if action == "require_approval" and wf is not None:
            rule["approval_policy"] = str(wf)
        if "description" in cond:
            rule["description"] = str(cond["description"])
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
