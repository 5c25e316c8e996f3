"""The gateway's HTTP front reaches into uvicorn's private protocol: fail loudly when that moves."""

from __future__ import annotations

from pathlib import Path

import pytest
import uvicorn

from mcp_gateway._inbound import hook_problems
from tests.interop.conftest import running_gateway

POLICY = 'version: "1"\ntools: []\ndefaults: {unknown_tools: allow, justification: none}\n'


def test_uvicorns_private_hooks_are_where_the_front_expects_them() -> None:
    problems = hook_problems()
    assert not problems, (
        f"uvicorn {uvicorn.__version__} changed the private HttpToolsProtocol hooks mcp_gateway/_inbound.py "
        f"relies on: {problems}. Update _inbound.py for this uvicorn (and the pin in pyproject.toml), or "
        "run the gateway with PRELOOP_GATEWAY_FAST_PATH=0 meanwhile."
    )


def test_uvicorn_is_the_pinned_minor() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("uvicorn"))
    lower = pin.split(">=")[1].split(",")[0]
    assert uvicorn.__version__.split(".")[:2] == lower.split(".")[:2], (uvicorn.__version__, pin)


@pytest.mark.parametrize("setting", ["0", "1"])
async def test_the_fast_path_setting_chooses_the_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("PRELOOP_GATEWAY_FAST_PATH", setting)
    async with running_gateway(tmp_path, POLICY) as gw:
        assert gw.fast_path is (setting == "1")
        assert gw.http_app().enabled is (setting == "1")
