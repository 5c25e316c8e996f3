"""The `preloop policy` commands, driven through typer's CliRunner on policy_app."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backend.policy_store.cli import policy_app
from tests.unit.policies.helpers import EXAMPLES

runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(policy_app, list(args))


def test_validate_ok_and_bad(tmp_path: Path) -> None:
    ok = run("validate", str(EXAMPLES / "demo.yaml"), str(EXAMPLES / "amount.yaml"))
    assert ok.exit_code == 0, ok.output
    assert "demo.yaml: ok (5 tools" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("tools:\n  - {name: t, action: deny, risk: huge}\ndefaults: {unknown_tools: deny}\n")
    result = run("validate", str(EXAMPLES / "demo.yaml"), str(bad))
    assert result.exit_code == 1
    assert f"{bad}:2:35: tools[0].risk must be one of low, medium, high, critical" in result.output
    assert "(value: 'huge') hint:" in result.output


def test_test_command_pass_and_fail(tmp_path: Path) -> None:
    ok = run("test", str(EXAMPLES / "conditional.yaml"))
    assert ok.exit_code == 0 and "5 passed, 0 failed" in ok.output
    failing = tmp_path / "f.yaml"
    failing.write_text("tools:\n  - {name: t, action: deny}\ndefaults: {unknown_tools: deny}\n"
                       "tests:\n  - {tool: t, expect: allow}\n")
    result = run("test", str(failing))
    assert result.exit_code == 1
    assert "FAIL tests[0] t (line 5): expected allow, got deny" in result.output


def test_explain_json_shape() -> None:
    result = run("explain", str(EXAMPLES / "demo.yaml"), "--tool", "deploy_production", "--server", "demo",
                 "--args", '{"environment": "production"}', "--justification", "release", "--agent", "ci",
                 "--at", "2025-01-08T10:00:00", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["decision"] == "require_approval"
    assert data["rule"]["tool"] == "deploy_production" and data["rule"]["index"] == 0
    ap = data["approval_policy"]
    assert ap["approvers"] == ["admin@demo.preloop.dev"] and ap["teams"] == ["sre"]
    assert (ap["quorum"], ap["timeout_seconds"]) == (1, 600)
    assert ap["escalation"] == [{"after_seconds": 300, "users": [], "teams": ["sre"]}]
    allowed = json.loads(run("explain", str(EXAMPLES / "demo.yaml"), "--tool", "read_logs", "--server", "demo",
                             "--json").output)
    assert allowed["decision"] == "allow" and allowed["approval_policy"] is None


def test_explain_text_and_time() -> None:
    result = run("explain", str(EXAMPLES / "time_based.yaml"), "--tool", "deploy", "--at", "2025-01-11T10:00:00")
    assert result.exit_code == 0
    assert "decision: require_approval" in result.output and "Weekend deployment" in result.output
    assert "approval: on-call" in result.output


def test_explain_bad_args() -> None:
    result = run("explain", str(EXAMPLES / "demo.yaml"), "--tool", "refund", "--args", "{nope")
    assert result.exit_code == 2 and "--args is not valid JSON" in result.output


def test_import_preloop_round_trip_validate_and_explain(tmp_path: Path) -> None:
    source = tmp_path / "preloop.yaml"
    source.write_text(
        "approval_workflows:\n  - {name: w, approver_users: [a@x.io], approvals_required: 1, tags: [x]}\n"
        "tools:\n  - {tool_name: deploy, source: infra, approval_workflow: w,\n"
        "     conditions: [{condition_type: cel, expression: \"args.env == 'prod'\"}]}\n"
        "defaults: {unknown_tools: deny}\n"
    )
    out = tmp_path / "ours.yaml"
    result = run("import-preloop", str(source), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "warning: approval_workflows[0]: field 'tags' does not affect decisions" in result.output
    assert run("validate", str(out)).exit_code == 0
    for args, expected in (('{"env": "prod"}', "require_approval"), ('{"env": "dev"}', "allow")):
        explained = json.loads(run("explain", str(out), "--tool", "deploy", "--args", args, "--json").output)
        assert explained["decision"] == expected and explained["rule"]["server"] == "infra"
    unknown = json.loads(run("explain", str(out), "--tool", "other", "--json").output)
    assert unknown["decision"] == "deny"


def test_import_preloop_fails_instead_of_dropping(tmp_path: Path) -> None:
    source = tmp_path / "preloop.yaml"
    source.write_text("approval_workflows:\n  - {name: w, approver_users: [a@x.io]}\n"
                      "tools:\n  - {tool_name: deploy, approval_workflow: w, sla: 5}\n")
    out = tmp_path / "ours.yaml"
    result = run("import-preloop", str(source), "-o", str(out))
    assert result.exit_code == 1
    assert "field 'sla' has no equivalent and could change a decision" in result.output
    assert f"{source}: cannot convert" in result.output and not out.exists()


class _Api(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, Any, str | None]] = []

    def _reply(self, status: int, body: Any, text: bool = False) -> None:
        payload = body.encode() if text else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"null")
        self.calls.append(("POST", self.path, body, self.headers.get("Authorization")))
        if "forbidden" in body["source"]:
            self._reply(403, {"error": {"code": "forbidden", "message": "admins only", "detail": None,
                                        "status": 403}})
        elif self.path == "/api/v1/policies":
            self._reply(201, {"version": 7, "sha256": "ab" * 32})
        else:
            self._reply(200, {"diff": "--- active\n+++ new\n-x\n+y\n", "active_version": 6})

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path, None, self.headers.get("Authorization")))
        self._reply(200, "version: '1'\n", text=True)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, Any, str | None]]]:
    server = HTTPServer(("127.0.0.1", 0), _Api)
    _Api.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PRELOOP_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("PRELOOP_API_KEY", "pl_test")
    yield _Api.calls
    server.shutdown()


def test_apply_diff_export_call_the_api(api: list[Any]) -> None:
    demo = EXAMPLES / "demo.yaml"
    applied = run("apply", str(demo))
    assert applied.exit_code == 0 and "version 7" in applied.output
    diffed = run("diff", str(demo))
    assert diffed.exit_code == 0 and "against active version 6" in diffed.output and "+y" in diffed.output
    exported = run("export", "--format", "json")
    assert exported.exit_code == 0 and "version: '1'" in exported.output
    assert [(m, p) for m, p, _, _ in api] == [("POST", "/api/v1/policies"), ("POST", "/api/v1/policies/diff"),
                                              ("GET", "/api/v1/policies/export?format=json")]
    assert api[0][2] == {"source": demo.read_text()} and api[0][3] == "Bearer pl_test"


def test_api_error_is_printed_and_exits_non_zero(api: list[Any], tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("name: forbidden\ntools:\n  - {name: t, action: deny}\ndefaults: {unknown_tools: deny}\n")
    result = run("apply", str(file))
    assert result.exit_code == 1
    assert "error: admins only (forbidden, HTTP 403)" in result.output


def test_apply_refuses_invalid_file_before_calling_the_api(api: list[Any], tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("tools: nope\n")
    result = run("apply", str(file))
    assert result.exit_code == 1 and api == []


def test_unreachable_api_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRELOOP_API_URL", "http://127.0.0.1:9")
    result = run("export")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Preloop API at http://127.0.0.1:9")


def test_explain_without_server_resolves_the_one_server_listing_the_tool() -> None:
    result = run("explain", str(EXAMPLES / "demo.yaml"), "--tool", "refund", "--args", '{"amount": 250}', "--json")
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)
    assert decision["decision"] == "require_approval"
    assert decision["rule"]["tool"] == "refund" and decision["rule"]["server"] == "demo"
    assert decision["approval_policy"]["name"] == "finance"


def test_explain_without_server_refuses_an_ambiguous_tool(tmp_path: Path) -> None:
    policy = tmp_path / "two.yaml"
    policy.write_text(
        'version: "1"\n'
        "servers:\n  - {name: a, command: [a]}\n  - {name: b, command: [b]}\n"
        "tools:\n  - {name: refund, server: a, action: allow}\n  - {name: refund, server: b, action: deny}\n"
        "defaults: {unknown_tools: deny}\n"
    )
    result = run("explain", str(policy), "--tool", "refund")
    assert result.exit_code == 2
    assert result.output.strip() == "tool 'refund' is listed under several servers (a, b); choose one with --server"
    assert run("explain", str(policy), "--tool", "refund", "--server", "b").output.startswith("decision: deny")
