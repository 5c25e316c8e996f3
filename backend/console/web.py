"""How the console plugs into the app: its routes, its templates, its static files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from backend.console.controllers import CONTROLLERS

HERE = Path(__file__).resolve().parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)


def route_handlers() -> list[Any]:
    return [
        *CONTROLLERS,
        create_static_files_router(path="/console/static", directories=[HERE / "static"], name="console-static",
                                   include_in_schema=False),
    ]
