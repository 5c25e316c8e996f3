"""One policy, one hash: `policy apply` (the hub), `policy validate` and the gateway print the same value;
a server a new policy drops is logged as removed, not as restarting."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backend.policy_store.cli import policy_app
from policies import load_policy
from tests.helpers import Org, auth
from tests.interop.conftest import PROBE, PYTHON, running_gateway

SOURCE = """# a comment the canonical hash does not see
version: "1"
tools:
  - name: deploy
    action: deny
defaults: {unknown_tools: allow, justification: none}
"""


async def test_apply_validate_and_gateway_agree_on_the_hash(client: Any, org: Org, tmp_path: Path) -> None:
    response = await client.post("/api/v1/policies", json={"source": SOURCE}, headers=auth(org.admin_token))
    assert response.status_code == 201, response.text
    applied = response.json()["sha256"]
    active = (await client.get("/api/v1/policies/active", headers=auth(org.agent_token))).json()
    file = tmp_path / "policy.yaml"
    file.write_text(SOURCE)
    validated = CliRunner().invoke(policy_app, ["validate", str(file)])
    assert validated.exit_code == 0, validated.output
    gateway_hash = load_policy(active["source"], source="gateway").version_hash  # what the snapshot logs
    assert applied == active["sha256"] == gateway_hash
    assert f"sha256 {applied[:12]}" in validated.output


async def test_a_server_removed_by_a_new_policy_is_logged_as_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with_probe = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
tools: []
defaults: {{unknown_tools: allow, justification: none}}
"""
    without = 'version: "1"\ntools: []\ndefaults: {unknown_tools: allow, justification: none}\n'
    caplog.set_level(logging.INFO)
    async with running_gateway(tmp_path, with_probe) as gw:
        assert gw.pool.route("show_args") is not None
        await gw.snapshot.install(load_policy(without, source="v2"), version=2, source_name="v2")
        assert gw.pool.route("show_args") is None
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("mcp_gateway")]
    assert any("probe" in m and "removed by the new policy" in m for m in messages), messages
    assert not any("restarting" in m for m in messages), messages
