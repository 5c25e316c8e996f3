"""The layers import one way: the hub holds connections and knows no jobs or flows; events are published
without the stream controller; flows never import the hub or the workers. (A circle here once ran
hub -> workers -> registry -> jobs -> flows -> events -> hub.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after_import(module: str) -> set[str]:
    ours = ("backend", "workers", "mcp_gateway", "litestar")
    script = (
        f"import json, sys, {module}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {ours!r})))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    ("module", "never"),
    [
        ("backend.hub", {"workers.settings", "workers.registry", "backend.approvals.flows", "backend.events"}),
        ("backend.events", {"backend.hub", "backend.event_stream", "litestar"}),
        ("backend.approvals.flows", {"backend.hub", "backend.event_stream", "workers.registry", "workers.settings"}),
        ("workers.settings", {"backend.app", "backend.event_stream"}),
        ("backend.effects", {"backend.hub", "backend.bus", "backend.redis_conn"}),
    ],
)
def test_a_lower_layer_never_imports_a_higher_one(module: str, never: set[str]) -> None:
    loaded = _loaded_after_import(module)
    assert module in loaded
    assert not (loaded & never), f"{module} pulls in {sorted(loaded & never)}"
