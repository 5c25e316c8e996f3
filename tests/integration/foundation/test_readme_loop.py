"""README's quick start, run as written: `make run`, then each step of "Try the whole loop" as its text says.

The steps are parsed from README.md (commands, tool calls and their arguments), so an example that
stops working, or a README edited into one that cannot run, fails here. Only the ports are swapped
for free ones, and the stdio gateway is told where that hub is (PRELOOP_API_URL).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.helpers import structured

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()


def _loop_section() -> str:
    start = README.index("### Try the whole loop")
    return README[start:README.index("\n## ", start)]


def _free_pair() -> int:
    """A port P with P+1 free too: `make run` puts the gateway on PORT+1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two adjacent free ports")


def _box(proc: subprocess.Popen[str]) -> list[str]:
    """Everything `make run` prints up to the end of its box (it must end with the box)."""
    lines: list[str] = []
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, "make run ended before printing its box:\n" + "".join(lines)
        lines.append(line.rstrip("\n"))
        if len(lines) > 1 and line.startswith("+-"):
            return lines


def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    section = _loop_section()
    port = _free_pair()
    swap = {"127.0.0.1:8686": f"127.0.0.1:{port}", "127.0.0.1:8687": f"127.0.0.1:{port + 1}"}

    def local(text: str) -> str:
        for old, new in swap.items():
            text = text.replace(old, new)
        return text

    # `make run` from a checkout-like folder: the Makefile, pyproject and the installed .venv.
    for name in ("Makefile", "pyproject.toml"):
        (tmp_path / name).symlink_to(ROOT / name)
    # The installed venv's programs, and a fresh install stamp: `make run` must find Preloop installed
    # and never reinstall it from this folder (that would point the real venv at a folder without code).
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(Path(sys.prefix) / "bin")
    (tmp_path / ".venv" / ".installed-run").touch()
    # As from a user's shell: no PRELOOP_ settings, and not inside another make (CI runs `make test`,
    # whose MAKELEVEL/MAKEFLAGS would make the inner make print "Entering directory").
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PRELOOP_") and k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    quick_start = re.search(r"```sh\n(make run)\b", README)
    assert quick_start, "README's quick start no longer starts with `make run`"
    hub = subprocess.Popen(
        quick_start.group(1).split(), cwd=tmp_path, env={**env, "PRELOOP_PORT": str(port)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        printed = _box(hub)
        assert printed[0].startswith("+-"), "make run printed something before its box:\n" + "\n".join(printed)
        box = "\n".join(printed)
        admin = re.search(r"login:\s+(\S+)", box)
        password = re.search(r"password: (\S+)", box)
        second = re.search(r"second approver[^:]*: (\S+) / (\S+)", box)
        assert admin and password and second, box
        assert f"http://127.0.0.1:{port}/app/" in box and f"http://127.0.0.1:{port + 1}/mcp" in box
        logins = {admin.group(1): password.group(1), second.group(1): second.group(2)}
        _run_the_loop(section, local, env, port, tmp_path, logins)
    finally:
        os.killpg(hub.pid, signal.SIGTERM)
        hub.wait(timeout=30)


def _run_the_loop(section: str, local: Any, env: dict[str, str], port: int, cwd: Path,
                  logins: dict[str, str]) -> None:
    api = f"http://127.0.0.1:{port}"
    stdio_line = re.search(r"over stdio:\s*`([^`]+)`", section)
    assert stdio_line, "step 1 no longer shows the stdio command"
    calls = re.findall(r"`(\w+)` with `(\{[^`]*\})`", section)
    assert [name for name, _ in calls] == ["read_logs", "refund", "drop_table"], calls
    arguments = {name: json.loads(args) for name, args in calls}
    assert re.search(r"`read_logs` with `[^`]*`: allowed", section)
    assert re.search(r"`refund` with `[^`]*`: held", section)
    assert re.search(r"`drop_table` with `[^`]*` needs two approvals", section)

    sessions = {}
    for email, password in logins.items():
        http = httpx.Client(base_url=api, timeout=10, headers={"Origin": api})  # as the app's pages send it
        assert http.post("/api/v1/auth/login", json={"email": email, "password": password}).status_code == 201
        sessions[email] = http
    approvers = list(sessions.values())

    async def approve_when_pending(tool: str, voters: list[httpx.Client]) -> None:
        with anyio.fail_after(40):
            while True:
                pending = [a for a in voters[0].get("/api/v1/approvals", params={"status": "pending"}).json()
                           if a["tool"] == tool]
                if pending:
                    break
                await anyio.sleep(0.2)
        if tool == "refund":  # the gateway sent the tool's schema: approvers see the default that will apply
            assert pending[0]["arguments_to_run"] == {**arguments["refund"], "currency": "USD"}
            assert pending[0]["can_vote"] is True
        for voter in voters:
            voted = voter.post(f"/api/v1/approvals/{pending[0]['id']}/approve", json={})
            assert voted.status_code == 200, voted.text

    async def agent() -> None:
        params = StdioServerParameters(
            command="bash", args=["-c", stdio_line.group(1)], cwd=str(cwd),
            env={"PATH": env["PATH"], "PRELOOP_API_URL": api, "HOME": str(cwd)},
        )
        async with Client(params) as client:  # type: ignore[arg-type]
            logs = await client.call_tool("read_logs", arguments["read_logs"])
            assert not logs.is_error, logs
            for tool, voters in (("refund", approvers[:1]), ("drop_table", approvers)):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(approve_when_pending, tool, voters)
                    result = await client.call_tool(tool, arguments[tool])
                assert not result.is_error, result
                if tool == "refund":
                    assert structured(result)["status"] == "succeeded"
                    assert structured(result)["charge_id"] == arguments["refund"]["charge_id"]

    anyio.run(agent)

    script = re.search(r"```sh\n(.*?)```", section, re.S)
    assert script, "step 4 no longer shows how to call the API"
    shell = subprocess.run(["bash", "-ec", local(script.group(1))], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    assert shell.returncode == 0, shell.stderr
    verdict = json.loads(shell.stdout)
    assert verdict["ok"] is True and verdict["events"] > 10
    schema = httpx.get(local("http://127.0.0.1:8686/schema"))
    assert schema.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in schema.text
