"""How the console plugs into the app: its routes, its templates, its static files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from backend.console.controllers import CONTROLLERS
from backend.console.directory import ConsoleDirectoryController

HERE = Path(__file__).resolve().parent


def pretty_json(value: Any) -> str:
    """Arguments as the agent sent them: indented, non-ASCII kept; autoescaping makes it text, not markup."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _add_filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["pretty_json"] = pretty_json


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_add_filters)


def route_handlers() -> list[Any]:
    return [
        *CONTROLLERS,
        ConsoleDirectoryController,
        create_static_files_router(path="/console/static", directories=[HERE / "static"], name="console-static",
                                   include_in_schema=False),
    ]
