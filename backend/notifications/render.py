"""Jinja2 templates for mail and the email-link pages (HTML autoescaped, text not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).resolve().parent / "templates"
_ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def render(name: str, **context: Any) -> str:
    return _ENV.get_template(name).render(**context)


def warm(*names: str) -> None:
    """Compile templates now (worker start), not inside the first fan-out's first mail."""
    for name in names:
        _ENV.get_template(name)
