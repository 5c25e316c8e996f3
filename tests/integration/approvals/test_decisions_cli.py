"""`preloop approvals ...` as an integrator's script runs it: real processes against a live hub."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.settings import Settings
from tests.conftest import LiveHub
from tests.helpers import Org, auth, free_port, make_org, wait_for_health
from tests.integration.approvals.support import POLICY

PRELOOP = str(Path(sys.executable).parent / "preloop")
TODAY = datetime.now(UTC).date().isoformat()


def run(args: list[str], url: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PRELOOP_API_URL", "PRELOOP_API_KEY"}}
    env["PRELOOP_API_URL"] = url
    if key is not None:
        env["PRELOOP_API_KEY"] = key
    return subprocess.run([PRELOOP, "approvals", *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def hold(url: str, org: Org, tool: str = "deploy", **arguments: Any) -> str:
    body = {"tool": tool, "server": "infra" if tool == "deploy" else "", "arguments": arguments or {"env": "prod"}}
    response = httpx.post(f"{url}/api/v1/approvals", json=body, headers=auth(org.agent_token), timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture
def org(live_hub: LiveHub) -> Org:
    org = live_hub.call(make_org())
    response = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": POLICY},
                          headers=auth(org.admin_token), timeout=10)
    assert response.status_code == 201, response.text
    return org


def test_every_subcommand_has_help_naming_the_exit_codes() -> None:
    top = subprocess.run([PRELOOP, "approvals", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert top.returncode == 0 and "6 hub unreachable" in " ".join(top.stdout.split())
    for command in ("list", "show", "approve", "decline", "watch", "export"):
        helped = subprocess.run([PRELOOP, "approvals", command, "--help"], capture_output=True, text=True,
                                timeout=60, check=False)
        assert helped.returncode == 0 and "Usage" in helped.stdout, (command, helped.stderr)


def test_list_show_approve_decline(live_hub: LiveHub, org: Org) -> None:
    alice = org.approver_tokens["alice"]
    first, second = hold(live_hub.url, org, env="prod"), hold(live_hub.url, org, env="staging")

    table = run(["list", "--status", "pending"], live_hub.url, alice)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "TOOL", "AGENT", "VOTES", "CREATED"]
    assert [r.split()[:5] for r in rows] == [[second, "pending", "deploy", "ci-bot", "0/1"],
                                             [first, "pending", "deploy", "ci-bot", "0/1"]]

    listed = run(["list", "--json"], live_hub.url, alice)
    assert listed.returncode == 0, listed.stderr
    assert [i["id"] for i in json.loads(listed.stdout)] == [second, first]

    shown = run(["show", first], live_hub.url, alice)
    assert shown.returncode == 0, shown.stderr
    assert f"id            {first}" in shown.stdout
    assert "deploy (server infra)" in shown.stdout and '{"env": "prod"}' in shown.stdout

    approved = run(["approve", first, "--reason", "release window"], live_hub.url, alice)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"approved {first}: now approved"
    declined = run(["decline", second, "--reason", "not today", "--json"], live_hub.url, alice)
    assert declined.returncode == 0, declined.stderr
    body = json.loads(declined.stdout)
    assert body["status"] == "declined"
    assert [(v["user"]["email"], v["decision"], v["reason"]) for v in body["votes"]] == [
        ("alice@acme.test", "decline", "not today")
    ]

    shown = run(["show", first, "--json"], live_hub.url, alice)
    assert json.loads(shown.stdout)["votes"][0]["reason"] == "release window"
    assert run(["list", "--status", "pending"], live_hub.url, alice).stdout == ""
    decided = run(["list", "--status", "approved,declined", "--json"], live_hub.url, alice)
    assert {i["id"]: i["status"] for i in json.loads(decided.stdout)} == {first: "approved", second: "declined"}


def test_quorum_progress_is_shown_while_pending(live_hub: LiveHub, org: Org) -> None:
    request_id = hold(live_hub.url, org, tool="grant_access")  # two-soft: alice, bob, carol, quorum 2
    voted = run(["approve", request_id], live_hub.url, org.approver_tokens["alice"])
    assert voted.returncode == 0, voted.stderr
    assert voted.stdout.strip() == f"approved {request_id}: vote recorded, still pending (1/2 approvals)"
    assert "approvals     1/2 (declines 0)" in run(["show", request_id], live_hub.url, org.admin_token).stdout


@pytest.mark.parametrize(
    ("case", "code", "fragment"),
    [
        ("already decided", 5, "409 already_decided): this request is already approved"),
        ("unknown id", 4, "no approval request"),
        ("bad key", 3, "set PRELOOP_API_KEY"),
        ("no key", 3, "PRELOOP_API_KEY is not set"),
        ("hub down", 6, "Set PRELOOP_API_URL to the hub's address"),
        ("bad url", 2, "PRELOOP_API_URL='hub.local'"),
        ("bad status", 2, "unknown status 'done'"),
        ("usage", 2, "Missing argument"),
    ],
)
def test_errors_are_one_line_with_documented_exit_codes(
    live_hub: LiveHub, org: Org, case: str, code: int, fragment: str
) -> None:
    alice = org.approver_tokens["alice"]
    url, key = live_hub.url, alice
    args = ["approve", hold(live_hub.url, org)]
    if case == "already decided":
        assert run(args, url, key).returncode == 0
    elif case == "unknown id":
        args = ["show", str(uuid.uuid4())]
    elif case == "bad key":
        key = "pl_unknown_key"
    elif case == "no key":
        key = None
    elif case == "hub down":
        url = f"http://127.0.0.1:{free_port()}"
    elif case == "bad url":
        url = "hub.local"
    elif case == "bad status":
        args = ["list", "--status", "done"]
    elif case == "usage":
        args = ["approve"]
    result = run(args, url, key)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if case != "usage":
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if case == "already decided":
        assert json.loads(run(["show", args[1], "--json"], url, alice).stdout)["status"] == "approved"


def test_export_between_dates_as_csv_and_json(live_hub: LiveHub, org: Org, tmp_path: Path) -> None:
    alice = org.approver_tokens["alice"]
    first, second = hold(live_hub.url, org, env="prod"), hold(live_hub.url, org, env="qa")
    assert run(["approve", first, "--reason", "ok"], live_hub.url, alice).returncode == 0

    target = tmp_path / "history.csv"
    exported = run(["export", "--from", TODAY, "--to", TODAY, "--format", "csv", "--output", str(target)],
                   live_hub.url, alice)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [(r["id"], r["status"], r["approved_by"]) for r in rows] == [
        (first, "approved", '["alice@acme.test"]'), (second, "pending", "[]")
    ]
    assert not list(tmp_path.glob("*.part"))

    as_json = run(["export", "--from", TODAY, "--to", TODAY, "--format", "json"], live_hub.url, alice)
    assert as_json.returncode == 0, as_json.stderr
    assert [(r["id"], r["approved_by"]) for r in json.loads(as_json.stdout)] == [(first, ["alice@acme.test"]),
                                                                                  (second, [])]

    earlier = run(["export", "--from", "2020-01-01", "--to", "2020-01-31", "--format", "json"], live_hub.url, alice)
    assert earlier.returncode == 0 and json.loads(earlier.stdout) == []

    bad_date = run(["export", "--from", "31/01/2026", "--to", TODAY], live_hub.url, alice)
    assert bad_date.returncode == 2 and "--from '31/01/2026' is not a date" in bad_date.stderr
    bad_format = run(["export", "--from", TODAY, "--to", TODAY, "--format", "xml"], live_hub.url, alice)
    assert bad_format.returncode == 2 and "use csv or json" in bad_format.stderr
    kept = tmp_path / "kept.json"
    kept.write_text("previous export")
    refused = run(["export", "--from", TODAY, "--to", TODAY, "--output", str(kept)], live_hub.url, "pl_bad")
    assert refused.returncode == 3 and kept.read_text() == "previous export"


# --- watch ---------------------------------------------------------------------------------------


class Watcher:
    """`preloop approvals watch` in a process, its stdout and stderr read line by line."""

    def __init__(self, url: str, key: str, *extra: str) -> None:
        env = {**os.environ, "PRELOOP_API_URL": url, "PRELOOP_API_KEY": key}
        self.process = subprocess.Popen([PRELOOP, "approvals", "watch", *extra], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for stream, sink in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, sink: queue.Queue[str]) -> None:
        for line in stream:
            sink.put(line.rstrip("\n"))

    def expect(self, sink: queue.Queue[str], fragment: str, timeout: float = 30) -> str:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = sink.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None or not sink.empty(), (self.process.returncode, seen)
                continue
            seen.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r}; saw {seen}")

    def stop(self, how: int) -> int:
        self.process.send_signal(how)
        return self.process.wait(timeout=15)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_watch_prints_one_line_per_event_and_exits_0_on_sigterm(live_hub: LiveHub, org: Org) -> None:
    watcher = Watcher(live_hub.url, org.approver_tokens["alice"])
    try:
        watcher.expect(watcher.err, f"watching {live_hub.url}")
        request_id = hold(live_hub.url, org)
        line = watcher.expect(watcher.out, "approval.requested")
        assert request_id in line and "tool=deploy" in line and "status=pending" in line
        assert run(["approve", request_id], live_hub.url, org.approver_tokens["bob"]).returncode == 0
        assert request_id in watcher.expect(watcher.out, "approval.approved")
        assert watcher.stop(signal.SIGTERM) == 0
        assert "Traceback" not in "".join(list(watcher.err.queue))
    finally:
        watcher.close()


def test_watch_json_lines_and_ctrl_c(live_hub: LiveHub, org: Org) -> None:
    watcher = Watcher(live_hub.url, org.approver_tokens["alice"], "--json")
    try:
        watcher.expect(watcher.err, "watching")
        request_id = hold(live_hub.url, org)
        event = json.loads(watcher.expect(watcher.out, "approval.requested"))
        assert (event["type"], event["request_id"], event["status"]) == ("approval.requested", request_id, "pending")
        assert watcher.stop(signal.SIGINT) == 0
    finally:
        watcher.close()


def test_watch_refuses_a_bad_key_and_an_absent_hub_at_start(live_hub: LiveHub, org: Org) -> None:
    bad = Watcher(live_hub.url, "pl_unknown_key")
    assert bad.process.wait(timeout=30) == 3
    assert "PRELOOP_API_KEY" in bad.expect(bad.err, "error:")
    down = Watcher(f"http://127.0.0.1:{free_port()}", org.approver_tokens["alice"])
    assert down.process.wait(timeout=30) == 6
    assert "PRELOOP_API_URL" in down.expect(down.err, "error:")


@contextmanager
def hub_process(settings: Settings, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`preloop serve --no-worker` on a fixed port, so a watcher can lose it and find it again."""
    env = {**os.environ, "PRELOOP_DATABASE_URL": settings.database_url, "PRELOOP_REDIS_URL": settings.redis.url,
           "PRELOOP_DATA_DIR": str(settings.server.data_dir), "PRELOOP_DEMO": "false",
           "PRELOOP_SECRET_KEY": "test-secret", "PRELOOP_PORT": str(port)}
    process = subprocess.Popen([PRELOOP, "serve", "--no-worker", "--gateway-port", "0"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_watch_reconnects_when_the_hub_comes_back(settings: Settings, tmp_path: Path) -> None:
    db_env = {**os.environ, "PRELOOP_DATABASE_URL": settings.database_url, "PRELOOP_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> str:
        done = subprocess.run([PRELOOP, *args], env=db_env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    cli("user", "add", "admin@acme.test", "--role", "admin")
    cli("user", "add", "alice@acme.test", "--role", "approver", "--team", "sre")
    cli("user", "add", "dev@acme.test", "--role", "viewer")
    admin = cli("key", "create", "--name", "admin-cli", "--scope", "admin")
    alice = cli("key", "create", "--name", "alice-cli", "--scope", "approver", "--user", "alice@acme.test")
    agent = cli("key", "create", "--name", "ci-bot", "--user", "dev@acme.test")
    org = Org(None, admin, agent, {"alice": alice})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with hub_process(settings, port):
        response = httpx.post(f"{url}/api/v1/policies", json={"source": POLICY}, headers=auth(admin), timeout=10)
        assert response.status_code == 201, response.text
        watcher = Watcher(url, alice)
        try:
            watcher.expect(watcher.err, "watching")
            first = hold(url, org)
            assert first in watcher.expect(watcher.out, "approval.requested")
        except BaseException:
            watcher.close()
            raise
    try:
        assert "reconnecting in" in watcher.expect(watcher.err, "lost the hub")
        assert watcher.process.poll() is None
        with hub_process(settings, port):
            watcher.expect(watcher.err, f"reconnected to {url}")
            second = hold(url, org, env="after-restart")
            assert second in watcher.expect(watcher.out, "approval.requested")
            assert watcher.stop(signal.SIGTERM) == 0
    finally:
        watcher.close()


def test_watch_resumes_with_last_event_id_from_a_server_that_numbers_events() -> None:
    """Today's hub sends no event ids; a hub (or proxy) that does gets `Last-Event-ID` on reconnect."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []
    release = threading.Event()

    class Numbered(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Last-Event-ID"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            number = 7 + len(seen) - 1
            event = {"type": "approval.requested", "request_id": f"r{number}", "status": "pending"}
            self.wfile.write(f"event: ready\ndata: {{}}\n\nid: {number}\nevent: approval.requested\n"
                             f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
            if len(seen) > 1:
                release.wait(30)  # the second stream stays open until the test ends

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Numbered)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watcher = Watcher(f"http://127.0.0.1:{server.server_address[1]}", "pl_any")
    try:
        assert "r7" in watcher.expect(watcher.out, "approval.requested")
        watcher.expect(watcher.err, "lost the hub (the hub closed the stream); reconnecting in 0.5s")
        watcher.expect(watcher.err, "reconnected to")
        assert "r8" in watcher.expect(watcher.out, "approval.requested")
        assert seen == [None, "7"]
        assert watcher.stop(signal.SIGTERM) == 0
        assert not any("not replayed" in line for line in watcher.err.queue)
    finally:
        release.set()
        watcher.close()
        server.shutdown()


def test_watch_piped_into_head_ends_cleanly(live_hub: LiveHub, org: Org) -> None:
    env = {**os.environ, "PRELOOP_API_URL": live_hub.url, "PRELOOP_API_KEY": org.approver_tokens["alice"]}
    pipeline = subprocess.Popen(["bash", "-c", f"set -o pipefail; {PRELOOP} approvals watch | head -n 1"],
                                env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert pipeline.stderr is not None
        assert "watching" in pipeline.stderr.readline()
        first = hold(live_hub.url, org, env="one")
        hold(live_hub.url, org, env="two")  # written after head has gone: the pipe is broken
        out, err = pipeline.communicate(timeout=30)
        assert pipeline.returncode == 0, err
        assert first in out and len(out.splitlines()) == 1
        assert "Traceback" not in err and "Broken pipe" not in err
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
