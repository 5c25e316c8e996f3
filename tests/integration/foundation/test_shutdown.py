"""`preloop serve` stops cleanly on SIGTERM (systemd, Docker, Fly) exactly as on Ctrl-C (SIGINT).

Real processes: the hub is started as a newcomer or an operator would, a long-poll and an SSE
stream are held open, the signal is sent, and afterwards the exit code is 0, the open requests
got proper answers, nothing was logged as a traceback or a graceful-shutdown timeout, and no
process of the hub (the embedded redis-server included) is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from backend.settings import Settings
from tests.helpers import free_port, wait_for_health

PRELOOP = str(Path(sys.executable).parent / "preloop")


def _start(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PRELOOP, "serve", "--port", str(port), "--gateway-port", "0"],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _demo_password(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:  # the demo banner is printed once, on first start
        if found := re.search(r"password: (\S+)", line):
            return found.group(1)
    raise AssertionError("no demo password printed")


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for init (the container's pid 1) to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _embedded_redis_pid(data_dir: Path) -> int:
    recorded = json.loads((data_dir / "redis.rdb.settings").read_text())
    return int(Path(recorded["pidfile"]).read_text().strip())


class Held:
    """Open requests held across the signal, each in its own thread."""

    def __init__(self, url: str, agent_key: str, cookie: str) -> None:
        self.url, self.agent, self.cookie = url, {"Authorization": f"Bearer {agent_key}"}, cookie
        self.results: dict[str, Any] = {}
        self.sse_ready = threading.Event()
        self.threads: list[threading.Thread] = []

    def _run(self, name: str, work: Any) -> None:
        def target() -> None:
            try:
                self.results[name] = work()
            except Exception as exc:  # recorded: the test asserts none happened
                self.results[name] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)

    def open(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.agent, timeout=10) as http:
            created = http.post("/api/v1/approvals", json={"tool": "drop_table", "arguments": {"table": "t"}})
            assert created.status_code == 201, created.text
            version = http.get("/api/v1/policies/active").json()["version"]
        request_id = created.json()["id"]

        def policy_poll() -> int:
            with httpx.Client(base_url=self.url, headers=self.agent, timeout=70) as http:
                return http.get("/api/v1/policies/active", params={"after": version, "wait": 60}).status_code

        def approvals_wait() -> tuple[int, Any]:
            with httpx.Client(base_url=self.url, headers=self.agent, timeout=70) as http:
                answer = http.post("/api/v1/approvals/wait", json={"ids": [request_id], "timeout": 60})
                return answer.status_code, answer.json()

        def events() -> tuple[int, str]:
            text = ""
            with (
                httpx.Client(base_url=self.url, cookies={"preloop_session": self.cookie}, timeout=70) as http,
                http.stream("GET", "/api/v1/events") as response,
            ):
                for chunk in response.iter_text():
                    text += chunk
                    if "event: ready" in text:
                        self.sse_ready.set()
                return response.status_code, text

        self._run("policy_poll", policy_poll)
        self._run("approvals_wait", approvals_wait)
        self._run("events", events)
        assert self.sse_ready.wait(15), self.results
        time.sleep(0.5)  # let the two long-polls reach the hub; they wait 60 s if nothing ends them
        self.request_id = request_id

    def join(self) -> None:
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "an open request was left hanging"


def _stop_and_check(process: subprocess.Popen[str], held: Held, signum: int, extra_pids: list[int]) -> float:
    hub = psutil.Process(process.pid)
    pids = [p.pid for p in hub.children(recursive=True)] + extra_pids
    started = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    elapsed = time.monotonic() - started
    held.join()
    assert process.returncode == 0, err[-3000:]
    assert held.results["policy_poll"] == 304
    status, body = held.results["approvals_wait"]
    assert (status, body.get("pending")) == (200, [held.request_id]), body
    status, text = held.results["events"]
    assert status == 200
    assert "event: shutdown" in text
    assert "Traceback" not in err
    assert "timeout graceful shutdown exceeded" not in err
    left = [pid for pid in pids if _alive(pid)]
    assert not left, f"processes of the hub still running: {left}"
    print(f"{signal.Signals(signum).name}: stopped in {elapsed:.2f}s")
    return elapsed


def _hold_open_requests(process: subprocess.Popen[str], port: int, data: Path) -> Held:
    """Sign in as the demo admin and open a policy long-poll, an approvals long-poll and an SSE stream."""
    password = _demo_password(process)
    wait_for_health(port, process)
    url = f"http://127.0.0.1:{port}"
    cookie = httpx.post(f"{url}/api/v1/auth/login", json={"email": "admin@demo.preloop.dev", "password": password})
    held = Held(url, (data / "demo-agent.key").read_text().strip(), cookie.cookies["preloop_session"])
    held.open()
    return held


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_embedded_mode_stops_cleanly(tmp_path: Path, signum: int) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRELOOP_")}
    env.update({"PRELOOP_DATA_DIR": str(data), "PRELOOP_LOG_FORMAT": "text"})
    process = _start(env, port, tmp_path)
    try:
        held = _hold_open_requests(process, port, data)
        redis_pid = _embedded_redis_pid(data)
        _stop_and_check(process, held, signum, [redis_pid])
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert not _alive(redis_pid)
    # Everything the hub wrote is for its user only (the embedded Redis saved its data on the way out).
    for name in ("preloop.db", "redis.rdb", "secret_key", "demo-agent.key", "hub.lock"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    # The next start is a fresh embedded Redis, not a leftover one.
    again = _start(env, port, tmp_path)
    try:
        wait_for_health(port, again)
        assert _embedded_redis_pid(data) != redis_pid
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)
    assert again.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_scaled_mode_stops_cleanly(tmp_path: Path, settings: Settings, signum: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRELOOP_")}
    env.update({
        "PRELOOP_DATA_DIR": str(tmp_path / "data"), "PRELOOP_LOG_FORMAT": "text",
        "PRELOOP_DATABASE_URL": settings.database_url, "PRELOOP_REDIS_URL": settings.redis.url,
        "PRELOOP_SECRET_KEY": "test-secret",
    })
    process = _start(env, port, tmp_path)
    try:
        held = _hold_open_requests(process, port, tmp_path / "data")
        _stop_and_check(process, held, signum, [])
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def postgres_url(_postgres_migrated: str) -> str:
    return _postgres_migrated


@pytest.mark.postgres
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_separate_worker_stops_cleanly(tmp_path: Path, postgres_url: str, redis_url: str, signum: int) -> None:
    """`preloop worker` (scaled mode, as systemd or Fly stop it): exit 0, a log line, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRELOOP_")}
    env.update({
        "PRELOOP_DATA_DIR": str(tmp_path / "data"), "PRELOOP_LOG_FORMAT": "text", "PRELOOP_LOG_LEVEL": "info",
        "PRELOOP_DATABASE_URL": postgres_url, "PRELOOP_REDIS_URL": redis_url,
        "PRELOOP_SECRET_KEY": "test-secret",
    })
    process = subprocess.Popen([PRELOOP, "worker"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Starting worker" in line or "hub started" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "the worker did not start:\n" + "".join(lines)
        time.sleep(1)  # past arq's start-up, into its job loop
        process.send_signal(signum)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=5)
    printed = "".join(lines)
    assert process.returncode == 0, printed
    assert "Traceback" not in printed and "CancelledError" not in printed, printed
    assert "worker stopped" in printed, printed


def test_a_second_hub_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRELOOP_")}
    env.update({"PRELOOP_DATA_DIR": str(data), "PRELOOP_DEMO": "false"})
    first_port, second_port = free_port(), free_port()
    first = _start(env, first_port, tmp_path)
    try:
        wait_for_health(first_port, first)
        second = _start(env, second_port, tmp_path)
        _, err = second.communicate(timeout=60)
        assert second.returncode != 0
        assert f"is using the data dir {data}" in err
        assert wait_for_health(first_port, first)["redis"]["ok"]  # the first hub's Redis is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_a_redis_server_left_by_a_killed_hub_is_stopped_not_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRELOOP_")}
    env.update({"PRELOOP_DATA_DIR": str(data), "PRELOOP_DEMO": "false", "PRELOOP_LOG_FORMAT": "text"})
    port = free_port()
    killed = _start(env, port, tmp_path)
    wait_for_health(port, killed)
    leftover = _embedded_redis_pid(data)
    killed.kill()  # kill -9: no cleanup can run
    killed.communicate(timeout=30)
    try:
        assert _alive(leftover)  # what kill -9 leaves behind
        again = _start(env, port, tmp_path)
        try:
            wait_for_health(port, again)
            assert not _alive(leftover)
            assert _embedded_redis_pid(data) != leftover
        finally:
            again.send_signal(signal.SIGTERM)
            _, err = again.communicate(timeout=30)
        assert again.returncode == 0
        assert "stopping an embedded redis-server left running by an earlier hub" in err
    finally:
        if _alive(leftover):
            os.kill(leftover, signal.SIGKILL)  # never leak it, even when the test fails
