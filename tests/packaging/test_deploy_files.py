"""The deployment files say what docs/deploy.md claims: checked by reading them (no Docker engine here)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from backend.app import create_app
from backend.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PRELOOP = str(Path(sys.executable).parent / "preloop")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|cc|libc6-dev|python3?-dev|[a-z0-9]+-dev)\b")


def dockerfile_stages() -> list[tuple[str, list[str]]]:
    """(FROM line, instructions) per stage, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[tuple[str, list[str]]] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def assert_is_a_preloop_command(command: str) -> None:
    """`command` starts with `preloop <subcommand>`, and each --option it passes is in that subcommand's --help."""
    words = shlex.split(command)
    assert Path(words[0]).name == "preloop", command
    path = [w for w in words[1:] if not w.startswith("-")]
    options = [w.split("=")[0] for w in words[1:] if w.startswith("--")]
    for depth in range(len(path), 0, -1):  # the longest prefix that is a command: `db migrate`, `serve`
        shown = subprocess.run([PRELOOP, *path[:depth], "--help"], capture_output=True, text=True, check=False)
        if shown.returncode == 0 and "Usage: preloop " + " ".join(path[:depth]) in " ".join(shown.stdout.split()):
            break
    else:
        pytest.fail(f"{command!r} is not a preloop command")
    for option in options:
        assert option in shown.stdout, f"{command!r}: {option} is not an option of preloop {' '.join(path[:depth])}"


def test_final_image_is_slim_non_root_without_build_tools() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a multi-stage build"
    (builder_from, builder), (final_from, final) = stages[0], stages[-1]
    assert " AS builder" in builder_from
    assert any("pip wheel" in i for i in builder), "the builder builds the wheels"
    # Every package the wheel ships is copied into the builder, the approver app included.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = " ".join(i for i in builder if i.upper().startswith("COPY "))
    for pattern in packages:
        assert f"COPY {pattern.rstrip('*')} " in copied, pattern
    assert "PYTHON_IMAGE=python:3.11-slim" in (ROOT / "Dockerfile").read_text()
    assert final_from.split()[1] == "${PYTHON_IMAGE}" and " AS " not in final_from.upper()
    # The builder installs the compilers; the final stage installs no system packages at all, and takes
    # nothing from the source tree: only the built wheels, installed offline.
    assert any("apt-get install" in i and BUILD_TOOLS.search(i) for i in builder)
    for instruction in final:
        assert not re.search(r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", instruction), instruction
        assert not instruction.upper().startswith(("COPY ", "ADD ")), (
            f"the final stage takes only built wheels from the builder: {instruction}"
        )
    assert any("from=builder" in i and "pip install" in i and "--no-index" in i for i in final)
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    created = " ".join(i for i in final if "useradd" in i)
    assert users[-1].split(":")[0] in created
    cmd = next(i for i in reversed(final) if i.upper().startswith("CMD "))
    assert_is_a_preloop_command(" ".join(json.loads(cmd[4:])))


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".preloop", "build", "tests"} <= ignored
    assert not ignored & {"backend", "policies", "mcp_gateway", "workers", "pwa", "pyproject.toml", "README.md"}


def hub_routes() -> set[str]:
    app = create_app(load_settings({"PRELOOP_DEMO": "false", "PRELOOP_DATA_DIR": "/nonexistent"}))
    return {route.path for route in app.routes}


def test_fly_processes_release_command_and_checks() -> None:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    assert fly["build"] == {"dockerfile": "Dockerfile"}
    processes = fly["processes"]
    assert set(processes) == {"api", "worker", "gateway"}
    for command in processes.values():
        assert_is_a_preloop_command(command)
    assert "--no-worker" in processes["api"]
    assert_is_a_preloop_command(fly["deploy"]["release_command"])
    assert shlex.split(fly["deploy"]["release_command"]) == ["preloop", "db", "migrate"]
    routes = hub_routes()
    api = next(s for s in fly["services"] if s["processes"] == ["api"])
    assert api["internal_port"] == int(fly["env"]["PRELOOP_PORT"])
    checked = {check["path"] for check in api["http_checks"]}
    assert checked == {"/health", "/ready"}
    assert checked <= routes
    gateway = next(s for s in fly["services"] if s["processes"] == ["gateway"])
    assert f":{gateway['internal_port']}" in processes["gateway"]
    scraped = {(m["processes"][0], m["port"], m["path"]) for m in fly["metrics"]}
    assert scraped == {("api", 8686, "/metrics"), ("worker", 9091, "/metrics"), ("gateway", 8787, "/metrics")}
    assert "--metrics [::]:9091" in processes["worker"]
    assert "/metrics" in routes


@pytest.mark.parametrize("unit", ["preloop-api", "preloop-worker", "preloop-gateway"])
def test_systemd_units_run_real_preloop_commands(unit: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "deploy" / f"{unit}.service")
    service = parser["Service"]
    assert service["User"] == "preloop" and service["NoNewPrivileges"] == "true"
    assert service["EnvironmentFile"] == "/etc/preloop/preloop.env"
    assert_is_a_preloop_command(service["ExecStart"])
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_env_example_names_only_real_settings() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    names = [line.split("=", 1)[0] for line in (ROOT / "deploy" / "preloop.env.example").read_text().splitlines()
             if line and not line.startswith("#")]
    assert "PRELOOP_DATABASE_URL" in names and "PRELOOP_REDIS_URL" in names and "PRELOOP_SECRET_KEY" in names
    for name in names:
        assert f"`{name}`" in documented, f"{name} is not documented in docs/configuration.md"
