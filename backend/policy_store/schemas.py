"""Request bodies for the policy endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class SourceBody(msgspec.Struct, forbid_unknown_fields=True):
    source: str
    message: str = ""


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    version: int


class AgentBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    id: str | None = None
    labels: dict[str, Any] = {}


class EvaluateBody(msgspec.Struct, forbid_unknown_fields=True):
    tool: str
    server: str = ""
    args: dict[str, Any] = {}
    agent: AgentBody | None = None
    justification: str | None = None
    at: datetime | None = None
