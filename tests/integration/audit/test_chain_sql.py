"""The JSON PostgreSQL writes into the audit chain is the JSON Python hashes (claim/report append in SQL)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from backend.approvals.tables import ApprovalRequest
from backend.audit import service as audit
from tests.conftest import _truncate_postgres


@pytest.fixture
def database_url(_postgres_migrated: str) -> str:
    """Only PostgreSQL: SQLite appends through Python."""
    asyncio.run(_truncate_postgres(_postgres_migrated))
    return _postgres_migrated


OBJECTS: list[dict[str, Any]] = [
    {"claimed_at": "2026-12-06T22:50:01.123456+00:00", "claimed_by": "agent", "success": True, "error": None},
    {"result_summary": 'naïve "quoted" \\ back\nnew\ttab \r\b\f \x01\x1f \x7f ✓ \u2028 😀 {} $1 %s', "ok": False},
    {"B": "upper sorts before lower", "a": "", "ä": "non-ASCII keys sort by code point", "aa": "x", "a b": "y"},
    {},
]


async def test_canonical_object_sql_matches_the_python_canonical_json(client: Any) -> None:
    for value in OBJECTS:
        [row] = await ApprovalRequest.raw(
            f"SELECT {audit.canonical_object_sql('{}::jsonb')} AS text", json.dumps(value)
        )
        assert row["text"] == audit._canonical(value)
