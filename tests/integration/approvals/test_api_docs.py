"""Every curl and Python example in docs/api.md, run literally against a live hub.

Only PRELOOP_API_URL and PRELOOP_API_KEY are set for each example (the key of the kind its
`<!-- example: NAME key=KIND -->` marker names); the test prepares what the example acts on and
checks what it did through the API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveHub
from tests.helpers import Org, auth, make_org
from tests.integration.approvals.support import POLICY

DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"
MARKER = re.compile(r"<!-- example: (?P<name>[\w-]+) key=(?P<key>approver|admin|agent) -->\n```(?P<lang>sh|python)\n"
                    r"(?P<code>.*?)\n```", re.S)


def examples() -> dict[str, tuple[str, str, str]]:
    text = DOC.read_text()
    found = {m["name"]: (m["key"], m["lang"], m["code"]) for m in MARKER.finditer(text)}
    runnable_blocks = len(re.findall(r"^```(?:sh|bash|python|py)\n", text, re.M))
    assert runnable_blocks == len(found), "every sh/python block in docs/api.md needs an example marker"
    return found


def test_every_runnable_block_is_a_checked_example() -> None:
    assert set(examples()) == set(CHECKS), "add a check below for each example in docs/api.md"


class Hub:
    def __init__(self, live_hub: LiveHub, org: Org) -> None:
        self.url, self.org = live_hub.url, org
        self.keys = {"approver": org.approver_tokens["alice"], "admin": org.admin_token, "agent": org.agent_token}

    def hold(self, **arguments: Any) -> str:
        body = {"tool": "deploy", "server": "infra", "arguments": arguments}
        response = httpx.post(f"{self.url}/api/v1/approvals", json=body, headers=auth(self.org.agent_token))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def get(self, request_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/approvals/{request_id}", headers=auth(self.keys["admin"]))
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def approve(self, request_id: str, who: str = "bob") -> None:
        response = httpx.post(f"{self.url}/api/v1/approvals/{request_id}/approve", json={"reason": "looks right"},
                              headers=auth(self.org.approver_tokens[who]))
        assert response.status_code == 200, response.text

    def approve_when_asked(self, ref: str) -> threading.Thread:
        """Like a person in the approver app: wait for the request to show up, then approve it."""

        def work() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pending = httpx.get(f"{self.url}/api/v1/approvals", params={"status": "pending"},
                                    headers=auth(self.org.approver_tokens["bob"])).json()
                for item in pending:
                    if item["arguments"].get("ref") == ref:
                        time.sleep(1)  # let the example reach its long-poll first
                        self.approve(item["id"])
                        return
                time.sleep(0.2)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread


def run_example(hub: Hub, name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    key, lang, code = examples()[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRELOOP_")}
    env |= {"PRELOOP_API_URL": hub.url, "PRELOOP_API_KEY": hub.keys[key]}
    command = ["bash", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def check_list_pending(hub: Hub, cwd: Path) -> None:
    request_id = hub.hold(env="prod")
    done = run_example(hub, "list-pending", cwd)
    assert done.returncode == 0, done.stderr
    assert [i["id"] for i in json.loads(done.stdout)] == [request_id]


def check_ci_approve(name: str) -> Callable[[Hub, Path], None]:
    def check(hub: Hub, cwd: Path) -> None:
        request_id = hub.hold(env="prod", ref=name)
        done = run_example(hub, name, cwd)
        assert done.returncode == 0, done.stderr
        assert f"{request_id} is now approved" in done.stdout
        decided = hub.get(request_id)
        assert decided["status"] == "approved"
        assert [(v["user"]["email"], v["reason"]) for v in decided["votes"]] == [
            ("alice@acme.test", "release checks passed")
        ]
        again = run_example(hub, name, cwd)  # nothing pending any more: still a clean exit
        assert again.returncode == 0, again.stderr

    return check


def check_siem_curl(hub: Hub, cwd: Path) -> None:
    first, second = hub.hold(env="prod"), hub.hold(env="qa")
    hub.approve(first)
    done = run_example(hub, "siem-export-curl", cwd)
    assert done.returncode == 0, done.stderr
    exported = (cwd / "approvals.csv").read_text()
    assert exported.startswith("id,status,tool,")
    assert first in exported and second in exported
    assert done.stdout.strip() == "3"


def check_siem_python(hub: Hub, cwd: Path) -> None:
    first, second = hub.hold(env="prod"), hub.hold(env="qa")
    hub.approve(first)
    done = run_example(hub, "siem-export-python", cwd)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (cwd / "approvals.ndjson").read_text().splitlines()]
    assert [(r["source"], r["id"], r["status"], r["approved_by"]) for r in records] == [
        ("preloop", first, "approved", ["bob@acme.test"]), ("preloop", second, "pending", [])
    ]


def check_wait(name: str, ref: str) -> Callable[[Hub, Path], None]:
    def check(hub: Hub, cwd: Path) -> None:
        approver = hub.approve_when_asked(ref)
        done = run_example(hub, name, cwd)
        approver.join(timeout=5)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "waiting for a decision on" in done.stdout
        assert "verdict: approved" in done.stdout

    return check


def check_retry(hub: Hub, cwd: Path) -> None:
    done = run_example(hub, "retry-curl", cwd)
    assert done.returncode == 0, done.stderr
    request_id = done.stdout.strip().removeprefix("one request: ")
    pending = httpx.get(f"{hub.url}/api/v1/approvals", params={"tool": "deploy"}, headers=auth(hub.keys["admin"]))
    assert [item["id"] for item in pending.json() if item["arguments"].get("ref") == "v1.4.4"] == [request_id]


CHECKS: dict[str, Callable[[Hub, Path], None]] = {
    "retry-curl": check_retry,
    "list-pending": check_list_pending,
    "ci-approve-curl": check_ci_approve("ci-approve-curl"),
    "ci-approve-python": check_ci_approve("ci-approve-python"),
    "siem-export-curl": check_siem_curl,
    "siem-export-python": check_siem_python,
    "wait-curl": check_wait("wait-curl", "v1.4.2"),
    "wait-python": check_wait("wait-python", "v1.4.3"),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs_as_written(live_hub: LiveHub, tmp_path: Path, name: str) -> None:
    org = live_hub.call(make_org())
    response = httpx.post(f"{live_hub.url}/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
    assert response.status_code == 201, response.text
    CHECKS[name](Hub(live_hub, org), tmp_path)
