"""docs/screenshots.py really writes a desktop screenshot of every console page."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.e2e.conftest import CHROMIUM, IN_CI

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "screenshots.py"
PAGES = {"login", "approvals", "approval-detail", "history", "policies", "policy-version", "audit", "keys",
         "autonomy", "policy-dry-run", "people", "teams", "channels"}


def test_screenshot_script_writes_every_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which(CHROMIUM):
        if IN_CI:
            pytest.fail(f"Chromium not found at {CHROMIUM}", pytrace=False)
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    monkeypatch.setenv("PRELOOP_REDIS_URL", REDIS_URL)
    spec = importlib.util.spec_from_file_location("console_screenshots", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(tmp_path)
    assert {path.stem for path in written} == PAGES
    for path in written:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert width == 1366 and height >= 900, (path.name, width, height)
