"""The preloop CLI as scripts use it: real processes, real databases, clear errors."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

PRELOOP = str(Path(sys.executable).parent / "preloop")


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PRELOOP, *args], env={**os.environ, **env}, input=stdin, capture_output=True, text=True, timeout=60,
        check=False,
    )


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"PRELOOP_DATABASE_URL": database_url, "PRELOOP_DATA_DIR": str(tmp_path / "data")}


def test_every_command_has_help() -> None:
    for args in (
        [], ["serve"], ["worker"], ["db", "migrate"], ["user", "add"], ["team", "add"], ["key", "create"],
        ["policy"], ["gateway"], ["user", "passwd"], ["user", "invite"], ["user", "deactivate"], ["key", "revoke"],
        ["team", "rename"], ["org", "add"],
    ):
        result = run([*args, "--help"], {})
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage" in result.stdout
        assert "<bool>" not in result.stdout and "╭" not in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["policy", "explain", "demo.yaml"], "error: Missing option '--tool'. (see `preloop policy explain --help`)"),
        (["user", "add", "a@corp.test", "--role"], "error: Option '--role' requires an argument."),
        (["no-such-command"], "error: No such command 'no-such-command'. (see `preloop --help`)"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], line: str) -> None:
    result = run(args, {})
    assert result.returncode == 2
    assert result.stderr == line + "\n"


def test_account_lifecycle_from_the_cli(cli_env: dict[str, str]) -> None:
    assert run(["user", "add", "root@corp.test", "--role", "admin"], cli_env).returncode == 0
    assert run(["user", "add", "ann@corp.test", "--team", "sre"], cli_env).returncode == 0
    passwd = run(["user", "passwd", "ann@corp.test", "--password-stdin"], cli_env, "a-long-password\n")
    assert passwd.returncode == 0 and "password set for ann@corp.test" in passwd.stderr
    assert run(["user", "passwd", "ann@corp.test"], cli_env).returncode == 2  # never from argv

    invite = run(["user", "invite", "root@corp.test"], cli_env)
    assert invite.returncode == 0, invite.stderr
    assert re.fullmatch(r"http://127\.0\.0\.1:8686/app/#invite=[\w-]{40,}\n", invite.stdout)

    off = run(["user", "deactivate", "ann@corp.test"], cli_env)
    assert off.returncode == 0 and "ann@corp.test deactivated" in off.stderr
    assert "already deactivated" in run(["user", "deactivate", "ann@corp.test"], cli_env).stderr
    assert run(["user", "reactivate", "ann@corp.test"], cli_env).returncode == 0

    assert run(["team", "rename", "sre", "oncall"], cli_env).returncode == 0
    assert run(["team", "add-member", "oncall", "root@corp.test"], cli_env).returncode == 0
    assert run(["team", "remove-member", "oncall", "ann@corp.test"], cli_env).returncode == 0
    missing = run(["team", "delete", "sre"], cli_env)
    assert missing.returncode == 1 and missing.stderr == "error: no team 'sre'\n"
    assert run(["team", "delete", "oncall"], cli_env).returncode == 0

    token = run(["key", "create", "--name", "bot"], cli_env).stdout.strip()
    prefix = token.split("_")[1]
    revoked = run(["key", "revoke", prefix], cli_env)
    assert revoked.returncode == 0 and f"revoked key bot ({prefix})" in revoked.stderr

    second = run(["org", "add", "Second Co", "--slug", "second", "--admin", "boss@second.test"], cli_env)
    assert second.returncode == 0, second.stderr
    assert "added organization Second Co (slug second)" in second.stderr and "#invite=" in second.stdout
    assert "already exists" in run(["org", "add", "Again", "--slug", "second"], cli_env).stderr


def test_users_teams_keys_bootstrap(cli_env: dict[str, str]) -> None:
    migrate = run(["db", "migrate"], cli_env)
    assert migrate.returncode == 0, migrate.stderr
    assert run(["team", "add", "sre_team"], cli_env).returncode == 0
    admin = run(["user", "add", "root@corp.test", "--role", "admin", "--password-stdin"], cli_env, "long-password\n")
    assert admin.returncode == 0, admin.stderr
    member = run(["user", "add", "ann@corp.test", "--team", "sre_team", "--team", "dba"], cli_env)
    assert member.returncode == 0 and "in sre_team, dba" in member.stderr

    key = run(["key", "create", "--name", "deploy-bot", "--label", "env=prod"], cli_env)
    assert key.returncode == 0, key.stderr
    lines = key.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pl_")  # alone on stdout, ready for $(...)


@pytest.mark.parametrize(
    ("args", "stdin", "fragment"),
    [
        (["user", "add", "not-an-email"], None, "is not an email address"),
        (["user", "add", "x@corp.test", "--role", "root"], None, "unknown role 'root'"),
        (["user", "add", "y@corp.test", "--password-stdin"], "short\n", "shorter than 8"),
        (["team", "add", "bad name!"], None, "is not a valid team name"),
        (["key", "create", "--name", "a", "--user", "ghost@corp.test"], None, "no user ghost@corp.test"),
        (["key", "create", "--name", "a", "--label", "novalue"], None, "must look like key=value"),
    ],
)
def test_bad_input_is_one_clear_line(cli_env: dict[str, str], args: list[str], stdin: str | None,
                                     fragment: str) -> None:
    result = run(args, cli_env, stdin)
    assert result.returncode == 1
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_user_is_refused(cli_env: dict[str, str]) -> None:
    assert run(["user", "add", "dup@corp.test"], cli_env).returncode == 0
    again = run(["user", "add", "Dup@corp.test"], cli_env)
    assert again.returncode == 1
    assert "error: user dup@corp.test already exists" in again.stderr


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PRELOOP_DATABASE_URL": "mysql://x/y"}, "PRELOOP_DATABASE_URL='mysql://x/y'"),
        ({"PRELOOP_PORT": "abc"}, "PRELOOP_PORT='abc': must be a whole number"),
        ({"PRELOOP_DATABASE_URL": "postgres://postgres@127.0.0.1:1/none"}, "PRELOOP_DATABASE_URL: cannot reach"),
        ({"PRELOOP_REDIS_URL": "redis://127.0.0.1:1/0", "PRELOOP_DATABASE_URL": ""},
         "PRELOOP_REDIS_URL: cannot reach Redis"),
    ],
)
def test_bad_environment_fails_serve_with_one_line(env: dict[str, str], fragment: str, tmp_path: Path) -> None:
    from tests.helpers import free_port

    result = run(["serve", "--port", str(free_port())], {"PRELOOP_DATA_DIR": str(tmp_path), **env})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_second_serve_on_a_taken_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["serve", "--port", str(port)], {"PRELOOP_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert f"error: port {port} on 127.0.0.1 is already in use" in result.stderr
