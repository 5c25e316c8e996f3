"""The built wheel alone runs the hub: no source checkout, the approver app and demo policy inside."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for_health

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel built from this tree installed (deps from the index)."""
    base = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: setuptools reuses an in-tree build/, which can hold files deleted since.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "node_modules", ".preloop", "__pycache__", ".*_cache", ".hypothesis"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(base / "dist")],
        capture_output=True, text=True, check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("preloop-*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    installed = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True, text=True, check=False, cwd=base,
    )
    assert installed.returncode == 0, installed.stderr
    return env_dir


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRELOOP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


@pytest.mark.slow
def test_the_wheel_carries_the_app_and_the_demo_policy(installed: Path, tmp_path: Path) -> None:
    python = installed / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import backend, pwa, policies; print(backend.__file__); print(pwa.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=_clean_env(),
    ).stdout.split()
    assert all(path.startswith(str(installed)) for path in where), where  # not imported from the checkout
    site = Path(where[1]).parent
    assert {"index.html", "app.js", "sw.js", "style.css", "manifest.webmanifest", "icon.svg"} <= {
        p.name for p in site.iterdir()
    }


@pytest.mark.slow
def test_preloop_serve_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    hub = subprocess.Popen(
        [str(installed / "bin" / "preloop"), "serve", "--port", str(port), "--gateway-port", "0"],
        env=_clean_env(PRELOOP_DATA_DIR=str(data)), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        health = wait_for_health(port, hub)
        assert health["status"] == "ok", health
        assert health["database"] == {"ok": True, "kind": "sqlite"}
        base = f"http://127.0.0.1:{port}"
        page = httpx.get(f"{base}/app/", timeout=5)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert (Path(__file__).resolve().parents[2] / "pwa" / "index.html").read_text() == page.text
        script = httpx.get(f"{base}/app/app.js", timeout=5)
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        key = (data / "demo-agent.key").read_text().strip()
        active = httpx.get(f"{base}/api/v1/policies/active", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert active.status_code == 200, active.text
        assert active.json()["version"] == 1 and "deploy_production" in active.json()["source"]
    finally:
        hub.send_signal(signal.SIGINT)
        _, err = hub.communicate(timeout=30)
    assert hub.returncode == 0, err
