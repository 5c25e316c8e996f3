"""Section reader for `tests:`, the policy's own test cases (tool, args, agent, time, expected action)."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any, cast
from zoneinfo import ZoneInfo

from yaml.nodes import MappingNode, Node, ScalarNode

from policies._nodes import INT, NodeReader, mark
from policies.model import ACTIONS, Action, AgentInfo, PolicyTestCase

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


class PolicyTestSections(NodeReader):
    """Reads the test cases a policy carries."""

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
