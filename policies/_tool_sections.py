"""Section readers for `tools:` (their rules and CEL conditions) and `resources:`."""

from __future__ import annotations

import difflib
from typing import cast

from yaml.nodes import MappingNode, Node, ScalarNode

from policies._approval_sections import ApprovalSections
from policies._nodes import mark
from policies.celexpr import compile_condition
from policies.model import ACTIONS, JUSTIFICATIONS, RISKS, Action, ParsedPolicy, ResourceRule, Risk, Rule, ToolEntry

TOOL_FIELDS = (
    "name",
    "server",
    "justification",
    "description",
    "rules",
    "action",
    "when",
    "approval_policy",
    "message",
    "risk",
)
RULE_FIELDS = ("when", "action", "approval_policy", "message", "description", "risk")
RESOURCE_FIELDS = ("uri", "action", "approval_policy", "message", "description")


class ToolSections(ApprovalSections):
    """Reads tools and resource rules, which name approval policies (hence built on :class:`ApprovalSections`)."""

    def tools(
        self, node: Node, parsed: ParsedPolicy, ap_names: set[str], default_ap: str | None
    ) -> list[ToolEntry]:
        out: list[ToolEntry] = []
        server_names = {s.name for s in parsed.servers}
        for i, item in enumerate(self.sequence(node, "tools") or []):
            path = f"tools[{i}]"
            before = len(self.issues)
            fields = self.mapping(item, path, TOOL_FIELDS, ("name",), what="a tool")
            if fields is None:
                continue
            had_unknown = len(self.issues) > before
            name = (
                self.string(fields["name"], f"{path}.name", hint="a tool name or glob like 'delete_*'")
                if "name" in fields
                else None
            )
            server = self.optional_string(fields, "server", path)
            if server is not None and server_names and server not in server_names and not _is_glob(server):
                close = difflib.get_close_matches(server, sorted(server_names), n=1)
                self.add(
                    fields["server"],
                    f"{path}.server",
                    f"server '{server}' is not declared under servers",
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"declared: {', '.join(sorted(server_names))}",
                )
            justification = self.optional_string(fields, "justification", path, JUSTIFICATIONS)
            description = self.optional_string(fields, "description", path)
            rules: list[Rule] = []
            shorthand = [k for k in ("action", "when", "approval_policy", "message", "risk") if k in fields]
            if "rules" in fields and shorthand:
                self.add(
                    fields[shorthand[0]],
                    f"{path}.{shorthand[0]}",
                    f"'{shorthand[0]}' cannot be combined with 'rules'",
                    "move it into a rule, or drop 'rules' and use the shorthand 'action:'",
                )
            elif "rules" in fields:
                rule_nodes = self.sequence(fields["rules"], f"{path}.rules")  # read once: one error per fault
                for j, rule_node in enumerate(rule_nodes or []):
                    rule = self.rule(
                        rule_node, f"{path}.rules[{j}]", RULE_FIELDS, ap_names, default_ap, parsed, (i, j)
                    )
                    if rule is not None:
                        rules.append(rule)
                if rule_nodes == []:
                    self.add(
                        fields["rules"],
                        f"{path}.rules",
                        "a tool needs at least one rule",
                        "add a rule, e.g. - {action: require_approval}",
                    )
            elif shorthand:
                rule = self.rule(
                    item, path, TOOL_FIELDS, ap_names, default_ap, parsed, (i, 0), shorthand=True
                )
                if rule is not None:
                    rules.append(rule)
            elif not had_unknown:  # a misspelt 'action' already has its own error
                self.add(
                    item,
                    path,
                    "a tool needs 'rules' or a blanket 'action'",
                    "e.g. action: require_approval, or rules: [{when: ..., action: ...}]",
                )
            if name is not None:
                out.append(
                    ToolEntry(
                        name=name,
                        rules=rules,
                        server=server,
                        justification=justification,  # type: ignore[arg-type]
                        description=description,
                    )
                )
        return out

    def rule(
        self,
        node: Node,
        path: str,
        allowed: tuple[str, ...],
        ap_names: set[str],
        default_ap: str | None,
        parsed: ParsedPolicy,
        key: tuple[int, int],
        shorthand: bool = False,
    ) -> Rule | None:
        if shorthand:
            fields = cast(
                dict[str, Node],
                {
                    k.value: v
                    for k, v in cast(MappingNode, node).value
                    if isinstance(k, ScalarNode) and k.value in allowed
                },
            )
        else:
            mapped = self.mapping(node, path, allowed, ("action",), what="a rule")
            if mapped is None:
                return None
            fields = mapped
        if "action" not in fields:
            if shorthand:
                self.add(
                    node,
                    path,
                    "missing required field 'action'",
                    "add action: allow | deny | require_approval",
                )
            return None
        action = self.string(fields["action"], f"{path}.action", ACTIONS)
        when: str | None = None
        if "when" in fields:
            when = self.string(fields["when"], f"{path}.when", hint="a CEL expression, quoted")
            if when is not None:
                program, problem = compile_condition(when)
                if problem is not None:
                    line, column = self._expr_position(fields["when"], problem.line, problem.column)
                    self.add(
                        fields["when"],
                        f"{path}.when",
                        problem.message,
                        problem.hint,
                        value=when,
                        line=line,
                        column=column,
                    )
                else:
                    parsed.programs[key] = program
        ap = self.optional_string(fields, "approval_policy", path)
        if ap is not None and ap not in ap_names:
            self._missing_ap(fields["approval_policy"], f"{path}.approval_policy", ap, ap_names)
        if action == "require_approval" and ap is None and default_ap is None:
            self.add(
                fields["action"],
                f"{path}.action",
                "require_approval needs an approval policy",
                "set approval_policy: NAME here or in defaults, and declare it under approval_policies",
            )
        if ap is not None and action in ("allow", "deny"):
            self.add(
                fields["approval_policy"],
                f"{path}.approval_policy",
                f"approval_policy has no effect with action '{action}'",
                "remove it, or use action: require_approval",
            )
        message = self.optional_string(fields, "message", path)
        description = self.optional_string(fields, "description", path)
        risk = self.optional_string(fields, "risk", path, RISKS)
        if action is None:
            return None
        return Rule(
            action=cast(Action, action),
            when=when,
            approval_policy=ap,
            message=message,
            description=description,
            risk=cast(Risk | None, risk),
        )

    def _expr_position(self, node: Node, line: int, column: int) -> tuple[int, int]:
        node_line, node_column = mark(node)
        style = getattr(node, "style", None)
        if style in ("|", ">"):
            return node_line + line, node_column + 2
        if line == 1:
            return node_line, node_column + column - 1 + (1 if style in ("'", '"') else 0)
        return node_line + line - 1, column

    def resources(self, node: Node, ap_names: set[str], default_ap: str | None) -> list[ResourceRule]:
        """`resources:` rules for `resources/read`, first match wins; no match allows."""
        out: list[ResourceRule] = []
        for i, item in enumerate(self.sequence(node, "resources") or []):
            path = f"resources[{i}]"
            fields = self.mapping(item, path, RESOURCE_FIELDS, ("uri", "action"), what="a resource rule")
            if fields is None:
                continue
            uri = self.string(fields["uri"], f"{path}.uri", hint="a URI glob like 'file:///etc/*'")
            action = self.optional_string(fields, "action", path, ("allow", "deny", "require_approval"))
            approval_policy = self.optional_string(fields, "approval_policy", path)
            if approval_policy is not None and approval_policy not in ap_names:
                self.add(
                    fields["approval_policy"],
                    f"{path}.approval_policy",
                    f"approval policy '{approval_policy}' is not declared",
                    f"declared: {', '.join(sorted(ap_names)) or 'none'}",
                )
            if action == "require_approval" and approval_policy is None and default_ap is None:
                self.add(
                    fields["action"],
                    f"{path}.action",
                    "require_approval needs an approval policy",
                    "set approval_policy: NAME here or in defaults, and declare it under approval_policies",
                )
            if uri is not None and action is not None:
                out.append(
                    ResourceRule(
                        uri=uri,
                        action=action,  # type: ignore[arg-type]
                        approval_policy=approval_policy,
                        message=self.optional_string(fields, "message", path),
                        description=self.optional_string(fields, "description", path),
                    )
                )
        return out


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")
