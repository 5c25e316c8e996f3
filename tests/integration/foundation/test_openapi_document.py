"""The committed docs/openapi.json is what the hub serves, so API changes show in review."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveHub

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def _differences(served: dict[str, Any], committed: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for path in sorted(set(served.get("paths", {})) | set(committed.get("paths", {}))):
        if served.get("paths", {}).get(path) != committed.get("paths", {}).get(path):
            out.append(f"paths {path}")
    out += [f"top-level {key}" for key in sorted(set(served) | set(committed))
            if key != "paths" and served.get(key) != committed.get(key)]
    return out


def test_served_document_matches_the_committed_one(live_hub: LiveHub) -> None:
    response = httpx.get(f"{live_hub.url}/schema/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    served = response.json()
    committed = json.loads(COMMITTED.read_text())
    differences = _differences(served, committed)
    assert not differences, (
        "docs/openapi.json is out of date; run `make openapi` and commit it. Differs in: " + ", ".join(differences)
    )
    assert served["paths"]["/api/v1/approvals/{approval_id}/approve"]["post"]["operationId"] == "approve_approval"
