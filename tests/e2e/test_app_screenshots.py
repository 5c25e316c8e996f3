"""docs/app_screenshots.py really writes a phone-sized screenshot of every approver-app screen."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.e2e.conftest import CHROMIUM, IN_CI

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "app_screenshots.py"


def test_app_screenshot_script_writes_every_screen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which(CHROMIUM):
        if IN_CI:
            pytest.fail(f"Chromium not found at {CHROMIUM}", pytrace=False)
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    monkeypatch.setenv("PRELOOP_REDIS_URL", REDIS_URL)
    spec = importlib.util.spec_from_file_location("app_screenshots", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(tmp_path)
    assert [path.stem for path in written] == [
        "sign-in", "inbox", "batch", "detail", "discussion", "history", "settings", "offline", "set-password",
        "add-passkey",
    ]
    for path in written:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert (width, height) == (780, 1688), (path.name, width, height)  # 390x844 at 2x
