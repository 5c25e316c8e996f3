"""Piccolo's configuration module; `DB` is swapped in at run time by `backend.db.use_database`."""

from piccolo.conf.apps import AppRegistry
from typing import Any

from piccolo.engine.base import Engine

DB: Engine[Any] | None = None

APP_REGISTRY = AppRegistry(apps=["backend.piccolo_app"])
