"""`preloop gateway` refuses settings that would break real clients, before starting anything."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from mcp_gateway.cli import check_hold_window, gateway_app


@pytest.mark.parametrize("seconds", [60, 90])
def test_a_hold_window_at_or_above_60_seconds_is_refused_with_the_reason(seconds: int) -> None:
    result = CliRunner().invoke(gateway_app, ["--stdio", "--hold-window", str(seconds)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "TypeScript MCP SDK" in output and "--hold-window-unsafe" in output


def test_the_unsafe_flag_and_shorter_windows_pass_the_check() -> None:
    check_hold_window(50, unsafe=False)
    check_hold_window(59.5, unsafe=False)
    check_hold_window(90, unsafe=True)
    with pytest.raises(typer.BadParameter):
        check_hold_window(0, unsafe=True)
