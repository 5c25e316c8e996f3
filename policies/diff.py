"""Unified diff of two policy texts, compared in canonical form so formatting never shows up."""

from __future__ import annotations

import difflib

from policies.canonical import export_policy
from policies.errors import PolicyError
from policies.loader import load_policy


def canonical_yaml(text: str, source: str = "<policy>") -> str:
    """The canonical YAML of ``text``; raises PolicyError when it does not load."""
    return export_policy(load_policy(text, source=source), "yaml")


def diff_policies(
    old_text: str | None, new_text: str, old_name: str = "active", new_name: str = "new"
) -> str:
    """A unified diff of the canonical YAML of both policies ("" when they mean the same).

    ``old_text`` None or empty (no active version yet) diffs against an empty document. The new
    text must load; PolicyError is raised otherwise.
    """
    old = ""
    if old_text is not None and old_text.strip():
        try:
            old = canonical_yaml(old_text, old_name)
        except PolicyError:
            old = old_text  # an old version the current schema rejects still diffs, as text
    new = canonical_yaml(new_text, new_name)
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=old_name, tofile=new_name
    )
    return "".join(lines)
