"""Typed readers for YAML nodes: a node as a string, number, list or mapping, or an issue at its line and column."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policies.durations import parse_duration
from policies.errors import PolicyIssue

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"


def mark(node: Node | None) -> tuple[int, int]:
    if node is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return {
        STR: "a string",
        INT: "an integer",
        BOOL: "a boolean",
        NULL: "null",
        "tag:yaml.org,2002:float": "a number",
        "tag:yaml.org,2002:timestamp": "a timestamp",
    }.get(node.tag, "a value")


class NodeReader:
    """Reads nodes of one document as typed values; every problem becomes a :class:`PolicyIssue` in `issues`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[PolicyIssue] = []
        self._constructor = SafeConstructor()

    # -- issue reporting -------------------------------------------------------------------
    def add(
        self,
        node: Node | None,
        path: str,
        message: str,
        hint: str = "",
        value: Any = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        node_line, node_column = mark(node)
        if value is None and isinstance(node, ScalarNode) and node.tag != NULL:
            value = node.value
        self.issues.append(
            PolicyIssue(self.source, line or node_line, column or node_column, path, value, message, hint)
        )

    def value(self, node: Node) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, TypeError, ValueError, RecursionError) as exc:
            self.add(
                node,
                "",
                f"cannot read this value: {exc}".splitlines()[0],
                "only plain YAML values (no tags) are allowed",
            )
            return None
        finally:
            self._constructor.constructed_objects.clear()
            self._constructor.recursive_objects.clear()

    # -- shapes ----------------------------------------------------------------------------
    def mapping(
        self, node: Node, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = (), what: str = ""
    ) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode):
            self.add(
                node,
                path,
                f"{what or path or 'document'} must be a mapping, got {kind(node)}",
                f"expected keys: {', '.join(allowed)}",
            )
            return None
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (STR, INT, BOOL, NULL):
                self.add(key_node, path, "keys must be plain names", f"expected one of: {', '.join(allowed)}")
                continue
            key = str(key_node.value)
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed here: {', '.join(allowed)}"
                self.add(key_node, join(path, key), f"unknown field '{key}'", hint, value=key)
                continue
            if key in out:
                self.add(
                    key_node,
                    join(path, key),
                    f"duplicate field '{key}'",
                    "each field may appear once",
                    value=key,
                )
                continue
            out[key] = value_node
        for key in required:
            if key not in out:
                self.add(
                    node,
                    path,
                    f"missing required field '{key}'" + (f" in {what}" if what else ""),
                    f"add '{key}:' to this mapping",
                )
        return out

    def sequence(self, node: Node, path: str, hint: str = "") -> list[Node] | None:
        if isinstance(node, ScalarNode) and node.tag == NULL:
            return []
        if not isinstance(node, SequenceNode):
            self.add(
                node, path, f"{path} must be a list, got {kind(node)}", hint or "write it as a YAML list"
            )
            return None
        return list(node.value)

    def string(
        self, node: Node, path: str, choices: tuple[str, ...] = (), allow_empty: bool = False, hint: str = ""
    ) -> str | None:
        if not isinstance(node, ScalarNode) or node.tag != STR:
            expected = f"one of {', '.join(choices)}" if choices else "a string"
            self.add(
                node,
                path,
                f"{path} must be {expected}, got {kind(node)}",
                hint or ("quote the value" if isinstance(node, ScalarNode) else ""),
            )
            return None
        text = str(node.value)
        if choices and text not in choices:
            close = difflib.get_close_matches(text, choices, n=1)
            self.add(
                node,
                path,
                f"{path} must be one of {', '.join(choices)}",
                f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(choices)}",
            )
            return None
        if not allow_empty and not text.strip():
            self.add(node, path, f"{path} must not be empty", hint)
            return None
        return text

    def optional_string(
        self, fields: dict[str, Node], key: str, path: str, choices: tuple[str, ...] = ()
    ) -> str | None:
        node = fields.get(key)
        if node is None or (isinstance(node, ScalarNode) and node.tag == NULL):
            return None
        return self.string(node, join(path, key), choices)

    def integer(self, node: Node, path: str, minimum: int = 0) -> int | None:
        if not isinstance(node, ScalarNode) or node.tag != INT:
            self.add(
                node,
                path,
                f"{path} must be an integer, got {kind(node)}",
                f"use a whole number >= {minimum}",
            )
            return None
        number = self.value(node)
        if not isinstance(number, int) or number < minimum:
            self.add(node, path, f"{path} must be at least {minimum}", f"use a whole number >= {minimum}")
            return None
        return number

    def boolean(self, node: Node, path: str) -> bool | None:
        if not isinstance(node, ScalarNode) or node.tag != BOOL:
            self.add(node, path, f"{path} must be true or false, got {kind(node)}", "write true or false")
            return None
        return bool(self.value(node))

    def duration(self, node: Node, path: str) -> int | None:
        if not isinstance(node, ScalarNode) or node.tag not in (STR, INT):
            self.add(
                node,
                path,
                f"{path} must be a duration, got {kind(node)}",
                "write seconds (600) or a string like '10m' or '1h30m'",
            )
            return None
        raw = self.value(node)
        try:
            return parse_duration(raw)
        except ValueError as exc:
            self.add(node, path, f"invalid duration: {exc}", "write seconds (600) or '10m', '1h30m', '2d'")
            return None

    def string_list(self, node: Node, path: str, hint: str = "") -> list[str] | None:
        items = self.sequence(node, path, hint)
        if items is None:
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(items):
            text = self.string(item, f"{path}[{i}]", hint=hint)
            if text is None:
                ok = False
            else:
                out.append(text)
        return out if ok else None

    def string_map(self, node: Node, path: str) -> dict[str, str] | None:
        if isinstance(node, ScalarNode) and node.tag == NULL:
            return {}
        if not isinstance(node, MappingNode):
            self.add(
                node, path, f"{path} must be a mapping of strings, got {kind(node)}", "e.g. {KEY: value}"
            )
            return None
        out: dict[str, str] = {}
        ok = True
        for key_node, value_node in node.value:
            key = self.string(key_node, f"{path} key")
            value = self.string(
                value_node,
                join(path, str(getattr(key_node, "value", "?"))),
                allow_empty=True,
                hint="quote numbers and booleans",
            )
            if key is None or value is None:
                ok = False
            else:
                out[key] = value
        return out if ok else None


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
