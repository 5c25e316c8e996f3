"""Section readers of a policy document: servers, approval policies, defaults, tools, resources, tests."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policies._nodes import INT, NULL, STR, NodeReader, mark
from policies.celexpr import compile_condition
from policies.model import (
    ACTIONS,
    CHANNELS,
    DECLINE_MODES,
    DEFAULT_CHANNELS,
    JUSTIFICATIONS,
    ON_TIMEOUT,
    RISKS,
    Action,
    AgentInfo,
    ApprovalPolicy,
    Defaults,
    EscalationLevel,
    Justification,
    PolicyTestCase,
    ResourceRule,
    Risk,
    Rule,
    ServerConfig,
    ToolEntry,
)

TOP_FIELDS = (
    "version",
    "name",
    "description",
    "timezone",
    "servers",
    "approval_policies",
    "tools",
    "resources",
    "defaults",
    "tests",
)
RESOURCE_FIELDS = ("uri", "action", "approval_policy", "message", "description")
SERVER_FIELDS = ("name", "command", "url", "headers", "env", "prefix")
MAX_DECLINE_REASONS = 12
MAX_DECLINE_REASON_CHARS = 200
APPROVAL_FIELDS = (
    "name",
    "description",
    "approvers",
    "teams",
    "quorum",
    "timeout",
    "on_timeout",
    "escalation",
    "channels",
    "require_passkey",
    "decline_mode",
    "require_decline_reason",
    "max_grant",
    "decline_reasons",
)
ESCALATION_FIELDS = ("after", "to")
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
DEFAULT_FIELDS = ("unknown_tools", "no_match", "approval_policy", "justification")
TEST_FIELDS = (
    "name",
    "tool",
    "server",
    "args",
    "agent",
    "at",
    "justification",
    "expect",
    "rule",
    "approval_policy",
)
AGENT_FIELDS = ("name", "id", "labels")


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



class PolicyReader(NodeReader):
    """Reads a whole policy document section by section, collecting every issue instead of stopping at one."""

    def __init__(self, source: str, team_sizes: dict[str, int] | None) -> None:
        super().__init__(source)
        self.team_sizes = team_sizes
        self.declared_ap_names: set[str] = set()
        self.declared_ap_order: list[str] = []

    # -- the document ---------------------------------------------------------------------
    def read(self, text: str) -> ParsedPolicy | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            where = exc.problem_mark or exc.context_mark
            line, column = (where.line + 1, where.column + 1) if where is not None else (1, 1)
            self.add(
                None,
                "",
                f"YAML syntax error: {exc.problem or exc.context}",
                "check indentation and quoting",
                line=line,
                column=column,
            )
            return None
        except yaml.YAMLError as exc:
            self.add(None, "", f"YAML error: {exc}", "check the file is one YAML document")
            return None
        if root is None:
            self.add(None, "", "the policy is empty", "start with 'version: \"1\"' and a 'tools:' list")
            return None
        fields = self.mapping(root, "", TOP_FIELDS, what="the policy")
        if fields is None:
            return None
        parsed = ParsedPolicy()
        if "version" in fields:
            node = fields["version"]
            if not (isinstance(node, ScalarNode) and node.tag in (STR, INT) and str(node.value) == "1"):
                self.add(node, "version", "unsupported policy version", 'use version: "1"')
        parsed.name = self.optional_string(fields, "name", "")
        parsed.description = self.optional_string(fields, "description", "")
        if "timezone" in fields:
            tz = self.string(fields["timezone"], "timezone")
            if tz is not None:
                try:
                    ZoneInfo(tz)
                    parsed.timezone = tz
                except (ZoneInfoNotFoundError, ValueError):
                    self.add(
                        fields["timezone"],
                        "timezone",
                        f"unknown timezone '{tz}'",
                        "use an IANA name such as 'Europe/Berlin' or 'UTC'",
                    )
        if "servers" in fields:
            parsed.servers = self.servers(fields["servers"])
        if "approval_policies" in fields:
            parsed.approval_policies = self.approval_policies(fields["approval_policies"])
        # Names of every declared approval policy, valid or not, so one bad policy does not also
        # turn each reference to it into a second error.
        ap_names = {ap.name for ap in parsed.approval_policies} | self.declared_ap_names
        if "defaults" in fields:
            parsed.defaults = self.defaults(fields["defaults"], ap_names) or Defaults()
        default_ap = parsed.defaults.approval_policy or (
            self.declared_ap_order[0] if self.declared_ap_order else None
        )
        if parsed.defaults.unknown_tools == "require_approval" and default_ap is None:
            self.add(
                fields.get("defaults", root),
                "defaults.unknown_tools",
                "defaults.unknown_tools is require_approval but no approval policy is declared",
                "declare one under approval_policies, or set defaults.unknown_tools to deny or allow",
            )
        if parsed.defaults.no_match == "require_approval" and default_ap is None:
            self.add(
                fields.get("defaults", root),
                "defaults.no_match",
                "defaults.no_match is require_approval but no approval policy is declared",
                "declare one under approval_policies",
            )
        if "tools" in fields:
            parsed.tools = self.tools(fields["tools"], parsed, ap_names, default_ap)
        if "resources" in fields:
            parsed.resources = self.resources(fields["resources"], ap_names, default_ap)
        if "tests" in fields:
            parsed.tests = self.tests(fields["tests"], parsed.timezone)
        return parsed

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

    def servers(self, node: Node) -> list[ServerConfig]:
        out: list[ServerConfig] = []
        seen: set[str] = set()
        for i, item in enumerate(self.sequence(node, "servers") or []):
            path = f"servers[{i}]"
            fields = self.mapping(item, path, SERVER_FIELDS, ("name",), what="a server")
            if fields is None:
                continue
            name = self.string(fields["name"], f"{path}.name") if "name" in fields else None
            if name is not None and name in seen:
                self.add(
                    fields["name"],
                    f"{path}.name",
                    f"duplicate server name '{name}'",
                    "server names must be unique",
                )
            command = (
                self.string_list(
                    fields["command"], f"{path}.command", "a command is a list: [python, -m, my_server]"
                )
                if "command" in fields
                else None
            )
            if command is not None and not command:
                self.add(
                    fields["command"],
                    f"{path}.command",
                    "command must not be empty",
                    "e.g. [python, -m, my_server]",
                )
            url = self.string(fields["url"], f"{path}.url") if "url" in fields else None
            if url is not None and not url.startswith(("http://", "https://")):
                self.add(
                    fields["url"],
                    f"{path}.url",
                    "url must start with http:// or https://",
                    "streamable HTTP servers are reached by URL",
                )
                url = None
            if ("command" in fields) == ("url" in fields):
                self.add(
                    item,
                    path,
                    "a server needs exactly one of 'command' (stdio) or 'url' (HTTP)",
                    "stdio: command: [python, -m, srv]; HTTP: url: https://host/mcp",
                )
            headers = self.string_map(fields["headers"], f"{path}.headers") if "headers" in fields else {}
            env = self.string_map(fields["env"], f"{path}.env") if "env" in fields else {}
            prefix = self.optional_string(fields, "prefix", path)
            if name is not None:
                seen.add(name)
                out.append(
                    ServerConfig(
                        name=name,
                        command=command,
                        url=url,
                        headers=headers or {},
                        env=env or {},
                        prefix=prefix,
                    )
                )
        return out

    def approval_policies(self, node: Node) -> list[ApprovalPolicy]:
        out: list[ApprovalPolicy] = []
        seen: set[str] = set()
        for i, item in enumerate(self.sequence(node, "approval_policies") or []):
            path = f"approval_policies[{i}]"
            fields = self.mapping(item, path, APPROVAL_FIELDS, ("name",), what="an approval policy")
            if fields is None:
                continue
            name = self.string(fields["name"], f"{path}.name") if "name" in fields else None
            if name is not None and name in seen:
                self.add(
                    fields["name"],
                    f"{path}.name",
                    f"duplicate approval policy '{name}'",
                    "names must be unique",
                )
                name = None
            if name is not None:
                self.declared_ap_names.add(name)
                self.declared_ap_order.append(name)
            approvers = self._approvers(fields, path)
            teams = self.string_list(fields["teams"], f"{path}.teams") if "teams" in fields else []
            quorum = self.integer(fields["quorum"], f"{path}.quorum", minimum=1) if "quorum" in fields else 1
            timeout = self.duration(fields["timeout"], f"{path}.timeout") if "timeout" in fields else 3600
            if timeout == 0:
                self.add(
                    fields["timeout"],
                    f"{path}.timeout",
                    "timeout must be longer than 0 seconds",
                    "e.g. timeout: 10m",
                )
            on_timeout = self.optional_string(fields, "on_timeout", path, ON_TIMEOUT) or "decline"
            decline_mode = self.optional_string(fields, "decline_mode", path, DECLINE_MODES) or "immediate"
            channels = (
                self.string_list(fields["channels"], f"{path}.channels")
                if "channels" in fields
                else list(DEFAULT_CHANNELS)
            )
            for j, channel in enumerate(channels or []):
                if channel not in CHANNELS:
                    self.add(
                        cast(SequenceNode, fields["channels"]).value[j],
                        f"{path}.channels[{j}]",
                        f"unknown channel '{channel}'",
                        f"channels: {', '.join(CHANNELS)}",
                    )
            flags = {}
            for key in ("require_passkey", "require_decline_reason"):
                flags[key] = self.boolean(fields[key], f"{path}.{key}") if key in fields else False
            max_grant = (
                self.duration(fields["max_grant"], f"{path}.max_grant") if "max_grant" in fields else 0
            )
            escalation = (
                self.escalation(fields["escalation"], f"{path}.escalation", timeout)
                if "escalation" in fields
                else []
            )
            description = self.optional_string(fields, "description", path)
            reasons = self._decline_reasons(fields, path)
            if approvers is not None and teams is not None and quorum is not None:
                self._check_pool(item, fields, path, approvers, teams, quorum)
            if (
                None in (name, approvers, teams, quorum, timeout, channels, max_grant, escalation, reasons)
                or None in flags.values()
            ):
                continue
            if name is not None:
                seen.add(name)
            out.append(
                ApprovalPolicy(
                    name=cast(str, name),
                    approvers=cast(list[str], approvers),
                    teams=cast(list[str], teams),
                    quorum=cast(int, quorum),
                    timeout_seconds=cast(int, timeout),
                    on_timeout=on_timeout,  # type: ignore[arg-type]
                    escalation=cast(list[EscalationLevel], escalation),
                    channels=cast(list[str], channels),
                    require_passkey=bool(flags["require_passkey"]),
                    decline_mode=decline_mode,  # type: ignore[arg-type]
                    require_decline_reason=bool(flags["require_decline_reason"]),
                    max_grant_seconds=cast(int, max_grant),
                    description=description,
                    decline_reasons=cast(list[str], reasons),
                )
            )
        return out

    def _decline_reasons(self, fields: dict[str, Node], path: str) -> list[str] | None:
        """Preset decline reasons offered as one-tap choices: short, distinct, non-empty lines."""
        if "decline_reasons" not in fields:
            return []
        where = f"{path}.decline_reasons"
        reasons = self.string_list(fields["decline_reasons"], where, "a list of short reasons")
        if reasons is None:
            return None
        node = cast(SequenceNode, fields["decline_reasons"])
        if len(reasons) > MAX_DECLINE_REASONS:
            self.add(node, where, f"{len(reasons)} decline reasons; at most {MAX_DECLINE_REASONS}",
                     "keep the few reasons approvers pick most often")
            return None
        ok = True
        for j, reason in enumerate(reasons):
            text = reason.strip()
            if not text or len(text) > MAX_DECLINE_REASON_CHARS or "\n" in text:
                self.add(node.value[j], f"{where}[{j}]",
                         f"decline reason must be one line of 1 to {MAX_DECLINE_REASON_CHARS} characters",
                         "e.g. decline_reasons: [\"Not during a freeze\", \"Wrong environment\"]")
                ok = False
            elif text in [r.strip() for r in reasons[:j]]:
                self.add(node.value[j], f"{where}[{j}]", f"decline reason '{text}' is listed twice",
                         "list each reason once")
                ok = False
        return [r.strip() for r in reasons] if ok else None

    def _approvers(self, fields: dict[str, Node], path: str) -> list[str] | None:
        if "approvers" not in fields:
            return []
        approvers = self.string_list(fields["approvers"], f"{path}.approvers", "approvers are user emails")
        for j, user in enumerate(approvers or []):
            if "@" not in user:
                self.add(
                    cast(SequenceNode, fields["approvers"]).value[j],
                    f"{path}.approvers[{j}]",
                    f"approver '{user}' is not an email address",
                    "approvers are user emails; put team names under 'teams'",
                )
                approvers = None
        return approvers

    def _check_pool(
        self,
        item: Node,
        fields: dict[str, Node],
        path: str,
        approvers: list[str],
        teams: list[str],
        quorum: int,
    ) -> None:
        if not approvers and not teams:
            self.add(
                item,
                path,
                "approval policy has no approvers and no teams",
                "add 'approvers: [you@example.com]' or 'teams: [sre]'",
            )
            return
        sizes = self.team_sizes
        if teams and (sizes is None or any(team not in sizes for team in teams)):
            return  # a team of unknown size may hold any number of approvers
        pool = len(set(approvers)) + sum((sizes or {})[team] for team in teams)
        if quorum > pool:
            self.add(
                fields.get("quorum", item),
                f"{path}.quorum",
                f"quorum {quorum} is larger than the approver pool ({pool})",
                f"lower quorum to at most {pool} or add approvers or teams",
                value=quorum,
            )

    def escalation(self, node: Node, path: str, timeout: int | None) -> list[EscalationLevel] | None:
        items = self.sequence(node, path, "escalation is a list of {after: 10m, to: [users or teams]}")
        if items is None:
            return None
        out: list[EscalationLevel] = []
        ok = True
        previous = 0
        for i, item in enumerate(items):
            lpath = f"{path}[{i}]"
            fields = self.mapping(item, lpath, ESCALATION_FIELDS, ("after", "to"), what="an escalation level")
            if fields is None or "after" not in fields or "to" not in fields:
                ok = False
                continue
            after = self.duration(fields["after"], f"{lpath}.after")
            targets = self.string_list(
                fields["to"], f"{lpath}.to", "users are emails, anything else is a team"
            )
            if after is None or targets is None:
                ok = False
                continue
            if after <= previous:
                self.add(
                    fields["after"],
                    f"{lpath}.after",
                    "escalation levels must come later than the previous one and after 0s",
                    "'after' is measured from request creation; order levels by time",
                )
                ok = False
            elif timeout is not None and after >= timeout:
                self.add(
                    fields["after"],
                    f"{lpath}.after",
                    "escalation happens at or after the timeout",
                    f"the request expires after {timeout}s; escalate earlier or raise timeout",
                )
                ok = False
            if not targets:
                self.add(
                    fields["to"],
                    f"{lpath}.to",
                    "escalation level has nobody to escalate to",
                    "list users (emails) or team names",
                )
                ok = False
            previous = max(previous, after)
            out.append(
                EscalationLevel(
                    after_seconds=after,
                    users=[t for t in targets if "@" in t],
                    teams=[t for t in targets if "@" not in t],
                )
            )
        return out if ok else None

    def defaults(self, node: Node, ap_names: set[str]) -> Defaults | None:
        if isinstance(node, ScalarNode) and node.tag == NULL:
            return Defaults()
        fields = self.mapping(node, "defaults", DEFAULT_FIELDS, what="defaults")
        if fields is None:
            return None
        unknown = self.optional_string(fields, "unknown_tools", "defaults", ACTIONS) or "require_approval"
        no_match = self.optional_string(fields, "no_match", "defaults", ACTIONS) or "allow"
        justification = (
            self.optional_string(fields, "justification", "defaults", JUSTIFICATIONS) or "optional"
        )
        ap = self.optional_string(fields, "approval_policy", "defaults")
        if ap is not None and ap not in ap_names:
            self._missing_ap(fields["approval_policy"], "defaults.approval_policy", ap, ap_names)
            ap = None
        return Defaults(
            unknown_tools=cast(Action, unknown),
            no_match=cast(Action, no_match),
            approval_policy=ap,
            justification=cast(Justification, justification),
        )

    def _missing_ap(self, node: Node, path: str, name: str, ap_names: set[str]) -> None:
        close = difflib.get_close_matches(name, sorted(ap_names), n=1)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else (
                f"declared approval policies: {', '.join(sorted(ap_names))}"
                if ap_names
                else "declare it under approval_policies"
            )
        )
        self.add(node, path, f"approval policy '{name}' is not defined", hint)

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

    def tests(self, node: Node, timezone: str) -> list[PolicyTestCase]:
        out: list[PolicyTestCase] = []
        for i, item in enumerate(self.sequence(node, "tests") or []):
            path = f"tests[{i}]"
            fields = self.mapping(item, path, TEST_FIELDS, ("tool", "expect"), what="a test case")
            if fields is None or "tool" not in fields or "expect" not in fields:
                continue
            tool = self.string(fields["tool"], f"{path}.tool")
            expect = self.string(fields["expect"], f"{path}.expect", ACTIONS)
            args: dict[str, Any] = {}
            if "args" in fields:
                raw = self.value(fields["args"]) if isinstance(fields["args"], MappingNode) else None
                if not isinstance(raw, dict):
                    self.add(
                        fields["args"], f"{path}.args", "args must be a mapping", "e.g. args: {amount: 250}"
                    )
                else:
                    args = _jsonable(raw)
            agent = self._agent(fields["agent"], f"{path}.agent") if "agent" in fields else None
            at = self._at(fields["at"], f"{path}.at", timezone) if "at" in fields else None
            rule: int | str | None = None
            if "rule" in fields:
                rnode = fields["rule"]
                if isinstance(rnode, ScalarNode) and rnode.tag == INT:
                    rule = self.integer(rnode, f"{path}.rule", 0)
                else:
                    rule = self.string(
                        rnode, f"{path}.rule", hint="a rule index (0-based) or its description"
                    )
            if tool is None or expect is None:
                continue
            out.append(
                PolicyTestCase(
                    tool=tool,
                    expect=cast(Action, expect),
                    args=args,
                    server=self.optional_string(fields, "server", path),
                    agent=agent,
                    at=at,
                    justification=self.optional_string(fields, "justification", path),
                    rule=rule,
                    approval_policy=self.optional_string(fields, "approval_policy", path),
                    name=self.optional_string(fields, "name", path),
                    line=mark(item)[0],
                )
            )
        return out

    def _agent(self, node: Node, path: str) -> AgentInfo | None:
        if isinstance(node, ScalarNode):
            name = self.string(node, path, hint="an agent name or {name, id, labels}")
            return AgentInfo(name=name) if name is not None else None
        fields = self.mapping(node, path, AGENT_FIELDS, what="an agent")
        if fields is None:
            return None
        labels = self.string_map(fields["labels"], f"{path}.labels") if "labels" in fields else {}
        return AgentInfo(
            name=self.optional_string(fields, "name", path) or "",
            id=self.optional_string(fields, "id", path) or "",
            labels=labels or {},
        )

    def _at(self, node: Node, path: str, timezone: str) -> datetime | None:
        raw = self.value(node) if isinstance(node, ScalarNode) else None
        moment: datetime | None = None
        if isinstance(raw, datetime):
            moment = raw
        elif isinstance(raw, date):
            moment = datetime.combine(raw, time(12, 0))
        elif isinstance(raw, str):
            try:
                moment = datetime.fromisoformat(raw)
            except ValueError:
                moment = None
        if moment is None:
            self.add(
                node,
                path,
                "at must be an ISO date-time",
                "e.g. '2025-01-04T10:00:00' (policy timezone) or '2025-01-04T10:00:00Z'",
            )
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(timezone))
        return moment


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set):
        return sorted(_jsonable(v) for v in value)
    return value


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")
