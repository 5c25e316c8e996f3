"""`preloop policy apply|diff|export` against a running hub, as a script would use them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveHub

PRELOOP = str(Path(sys.executable).parent / "preloop")
EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PRELOOP, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_apply_diff_export_through_the_api(live_hub: LiveHub, tmp_path: Path) -> None:
    db_env = {"PRELOOP_DATABASE_URL": live_hub.settings.database_url, "PRELOOP_DATA_DIR": str(tmp_path)}
    assert run(["user", "add", "root@corp.test", "--role", "admin"], db_env).returncode == 0
    token = run(["key", "create", "--name", "policy-ci", "--scope", "admin"], db_env).stdout.strip()
    env = {"PRELOOP_API_URL": live_hub.url, "PRELOOP_API_KEY": token}

    first = EXAMPLES / "conditional.yaml"
    applied = run(["policy", "apply", str(first)], env)
    assert applied.returncode == 0, applied.stderr
    assert "version 1" in applied.stdout + applied.stderr

    changed = tmp_path / "changed.yaml"
    changed.write_text(first.read_text().replace("timeout: 15m", "timeout: 45m"))
    assert changed.read_text() != first.read_text(), "the example must contain 'timeout: 15m'"
    diff = run(["policy", "diff", str(changed)], env)
    assert diff.returncode == 0, diff.stderr
    assert "2700" in diff.stdout or "45m" in diff.stdout

    exported = run(["policy", "export"], env)
    assert exported.returncode == 0 and exported.stdout.strip() == first.read_text().strip()
    as_json = run(["policy", "export", "--format", "json"], env)
    assert as_json.returncode == 0 and as_json.stdout.lstrip().startswith("{")


def test_apply_prints_the_hubs_warnings(live_hub: LiveHub, tmp_path: Path) -> None:
    db_env = {"PRELOOP_DATABASE_URL": live_hub.settings.database_url, "PRELOOP_DATA_DIR": str(tmp_path)}
    assert run(["user", "add", "root@corp.test", "--role", "admin"], db_env).returncode == 0
    token = run(["key", "create", "--name", "policy-ci", "--scope", "admin"], db_env).stdout.strip()
    applied = run(["policy", "apply", str(EXAMPLES / "team_quorum.yaml")],
                  {"PRELOOP_API_URL": live_hub.url, "PRELOOP_API_KEY": token})
    assert applied.returncode == 0, applied.stderr
    assert "warning: approval policy 'dba-any-one': no team 'database' in this organization" in applied.stderr


def test_api_errors_are_clear(live_hub: LiveHub, tmp_path: Path) -> None:
    example = str(EXAMPLES / "conditional.yaml")
    no_key = run(["policy", "apply", example], {"PRELOOP_API_URL": live_hub.url, "PRELOOP_API_KEY": "pl_x_bad"})
    assert no_key.returncode != 0 and "unknown or revoked API key" in no_key.stderr
    down = run(["policy", "export"], {"PRELOOP_API_URL": "http://127.0.0.1:9", "PRELOOP_API_KEY": "pl_x"})
    assert down.returncode != 0 and "Traceback" not in down.stderr
    assert "preloop serve" in down.stderr
