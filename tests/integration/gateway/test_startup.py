"""Starting a gateway: the hub's active policy first, the cache only while the hub is unreachable,
and a refused API key said at once, by name."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from mcp import Client

from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from mcp_gateway.results import STATUS_KEY
from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org
from tests.interop.conftest import PROBE, PYTHON, closed_port_url, serving_http

LAX = f"""
version: "1"
servers:
  - name: probe
    command: [{PYTHON}, {PROBE}]
tools:
  - name: show_args
    action: allow
defaults: {{unknown_tools: deny, justification: none}}
"""

STRICT = LAX.replace("action: allow", "action: deny\n    message: show_args is off limits now")


def apply(hub_url: str, org: Org, source: str) -> int:
    response = httpx.post(f"{hub_url}/api/v1/policies", json={"source": source}, headers=auth(org.admin_token),
                          timeout=10)
    assert response.status_code == 201, response.text
    return int(response.json()["version"])


@asynccontextmanager
async def gateway(api_url: str, key: str | None, data_dir: Path) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(api_url=api_url, api_key=key, hold_window=5, data_dir=data_dir, startup_timeout=10)
    async with Gateway(settings) as gw:
        yield gw


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    org: Org = live_hub.call(make_org())
    return org


async def test_a_restarted_gateway_never_serves_a_cached_policy_the_hub_has_replaced(
    live_hub: LiveHub, org: Org, tmp_path: Path
) -> None:
    data = tmp_path / "gw"
    apply(live_hub.url, org, LAX)
    async with gateway(live_hub.url, org.agent_token, data) as gw, Client(gw.server.server) as client:
        assert not (await client.call_tool("show_args", {"value": "x"})).is_error
    old_cache = (data / "last-policy.json").read_text()
    assert "action: allow" in json.loads(old_cache)["source"]
    strict = apply(live_hub.url, org, STRICT)
    for _ in range(5):
        (data / "last-policy.json").write_text(old_cache)  # the laxer snapshot is on disk at every start
        async with gateway(live_hub.url, org.agent_token, data) as gw, Client(gw.server.server) as client:
            result = await client.call_tool("show_args", {"value": "x"})
            assert result.is_error, result
            assert result.meta is not None and result.meta[STATUS_KEY] == "denied_by_policy", result
            health = gw.health()
            assert health["policy"]["source"] == "hub" and health["policy"]["version"] == strict
            assert health["status"] == "ok"


async def test_the_cache_serves_only_while_the_hub_is_unreachable_and_says_so(
    live_hub: LiveHub, org: Org, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "gw"
    version = apply(live_hub.url, org, LAX)
    async with gateway(live_hub.url, org.agent_token, data):
        pass
    caplog.set_level(logging.WARNING)
    async with gateway(closed_port_url(), org.agent_token, data) as gw:
        async with Client(gw.server.server) as client:
            assert not (await client.call_tool("show_args", {"value": "x"})).is_error
        async with serving_http(gw) as url, httpx.AsyncClient() as http:
            health = (await http.get(url.replace("/mcp", "/health"))).json()
    assert health["status"] == "degraded"
    assert health["policy"] == {"source": "cache", "version": version, "hash": health["policy"]["hash"],
                                "name": f"cached policy v{version}"}
    assert health["hub"]["state"] == "unreachable" and health["hub"]["error"]
    assert any("CACHED policy version" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("key", ["pl_not-a-real-key", None])
async def test_a_refused_api_key_is_named_at_once(
    live_hub: LiveHub, org: Org, tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str | None
) -> None:
    apply(live_hub.url, org, LAX)
    data = tmp_path / "gw"
    # A cache on disk must not be served either: the hub is reachable, it refuses.
    async with gateway(live_hub.url, org.agent_token, data):
        pass
    caplog.set_level(logging.ERROR)
    async with gateway(live_hub.url, key, data) as gw, Client(gw.server.server) as client:
        result = await client.call_tool("show_args", {"value": "x"})
        health = gw.health()
    assert result.is_error
    assert result.meta is not None and result.meta[STATUS_KEY] == "api_key_refused"
    text = result.content[0].text  # type: ignore[union-attr]
    assert "PRELOOP_API_KEY" in text and "did not run" in text
    assert ("is not set" in text) == (key is None)
    assert health["hub"]["state"] == "key_refused" and health["status"] == "degraded"
    assert health["policy"]["source"] == "none"
    assert any("PRELOOP_API_KEY" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
