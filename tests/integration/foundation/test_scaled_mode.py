"""Scaled mode by configuration only: `serve --no-worker` and `worker` as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers import free_port, wait_for_health

PRELOOP = str(Path(sys.executable).parent / "preloop")


def _wait_for(predicate, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_api_and_worker_run_apart_on_postgres_and_redis(
    _postgres_migrated: str,  # noqa: PT019 - its value, the database URL, is used
    redis_url: str,
    tmp_path: Path,
) -> None:
    redis.Redis.from_url(redis_url).delete("preloop:worker:heartbeat")
    port = free_port()
    env = {
        **os.environ,
        "PRELOOP_DATABASE_URL": _postgres_migrated,
        "PRELOOP_REDIS_URL": redis_url,
        "PRELOOP_DATA_DIR": str(tmp_path),
        "PRELOOP_DEMO": "false",
        "PRELOOP_LOG_FORMAT": "json",
    }
    api = subprocess.Popen([PRELOOP, "serve", "--no-worker", "--port", str(port)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        def health() -> dict[str, object] | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()  # type: ignore[no-any-return]
            except httpx.HTTPError:
                return None

        report = wait_for_health(port, api)
        assert report["database"] == {"ok": True, "kind": "postgresql"}
        assert report["redis"] == {"ok": True, "embedded": False}
        assert report["worker"] == {"last_heartbeat": None}  # no worker in this process

        worker = subprocess.Popen([PRELOOP, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        beat = _wait_for(lambda: (health() or {}).get("worker", {}).get("last_heartbeat"), "a worker heartbeat")
        assert str(beat).startswith("20")
    finally:
        for process in (worker, api):
            if process is not None:
                process.terminate()
        _, api_err = api.communicate(timeout=20)
        if worker is not None:
            worker.communicate(timeout=20)
    records = [json.loads(line) for line in api_err.splitlines() if line.startswith("{")]
    assert any(r["msg"] == "hub started" and r["database"] == "postgresql" for r in records), api_err[-2000:]
    assert not any(r["msg"] == "in-process worker started" for r in records), "--no-worker started a worker"
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)


def test_worker_refuses_embedded_redis(tmp_path: Path) -> None:
    result = subprocess.run([PRELOOP, "worker"], env={**os.environ, "PRELOOP_DATA_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "PRELOOP_REDIS_URL must point at a shared Redis" in result.stderr
