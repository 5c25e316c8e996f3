"""The contract tests run the hub with short long-polls, so a fuzzer's `wait=3600` costs a second."""

from __future__ import annotations

from dataclasses import replace

import pytest

from backend.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(
        settings,
        approvals=replace(settings.approvals, max_wait_seconds=1),
        # The fuzzer sends wrong credentials on purpose; the per-address lockout is tested elsewhere
        # (tests/security/test_token_throttle.py) and would turn the rest of the run into 429s.
        security=replace(settings.security, address_max_failures=100_000, login_max_failures=1000),
    )
