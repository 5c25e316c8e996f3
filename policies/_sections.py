"""Reads a whole policy document: the top level, `servers:` and `defaults:`; the other sections' readers are
in `_approval_sections` (approval policies), `_tool_sections` (tools, rules, resources), `_test_sections` (tests)."""

from __future__ import annotations

from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from yaml.nodes import Node, ScalarNode

from policies._nodes import INT, NULL, STR
from policies._test_sections import PolicyTestSections
from policies._tool_sections import ToolSections
from policies.model import ACTIONS, JUSTIFICATIONS, Action, Defaults, Justification, ParsedPolicy, ServerConfig

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
SERVER_FIELDS = ("name", "command", "url", "headers", "env", "prefix")
DEFAULT_FIELDS = ("unknown_tools", "no_match", "approval_policy", "justification")


class PolicyReader(ToolSections, PolicyTestSections):
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
