"""Piccolo's configuration module; `DB` is swapped in at run time by `backend.db.use_database`."""

from typing import Any

from piccolo.conf.apps import AppRegistry
from piccolo.engine.base import Engine

DB: Engine[Any] | None = None

APP_REGISTRY = AppRegistry(apps=["backend.piccolo_app"])
