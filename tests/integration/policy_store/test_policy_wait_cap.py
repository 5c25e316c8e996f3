"""`GET /policies/active?wait=` holds no longer than PRELOOP_MAX_WAIT_SECONDS, like /approvals/wait."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from backend.settings import Settings, load_settings
from tests.conftest import LiveHub
from tests.helpers import auth, make_org

POLICY = 'version: "1"\ntools:\n  - name: read_logs\n    action: allow\ndefaults:\n  unknown_tools: deny\n'


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return load_settings({
        "PRELOOP_DATABASE_URL": database_url, "PRELOOP_REDIS_URL": redis_url,
        "PRELOOP_DATA_DIR": str(tmp_path / "data"), "PRELOOP_DEMO": "false", "PRELOOP_SECRET_KEY": "test-secret",
        "PRELOOP_MAX_WAIT_SECONDS": "1",
    })


@pytest.mark.parametrize("wait", [120, 3600])
def test_a_long_wait_is_cut_to_the_configured_maximum(live_hub: LiveHub, wait: int) -> None:
    org = live_hub.call(make_org())
    applied = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert applied.status_code == 201, applied.text
    # Nothing newer than version 1 arrives: the hub must answer 304 after its 1 s cap, well inside
    # the client's 30 s (ignoring the cap, it would hold for `wait` seconds or refuse wait > 300).
    answer = httpx.get(f"{live_hub.url}/api/v1/policies/active", params={"after": 1, "wait": wait},
                       headers=auth(org.agent_token), timeout=30)
    assert answer.status_code == 304, answer.text


def test_wait_beyond_the_bound_is_a_clear_error(live_hub: LiveHub) -> None:
    org = live_hub.call(make_org())
    answer = httpx.get(f"{live_hub.url}/api/v1/policies/active", params={"after": 0, "wait": 3601},
                       headers=auth(org.agent_token), timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_input"
