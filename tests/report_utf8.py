"""A pytest plugin: test reports leave an xdist worker as valid UTF-8.

xdist sends each report to the controller through execnet, which refuses a string that is not UTF-8
encodable (`DumpError: strings must be utf-8 encodable`). A passing test whose captured log holds an
unpaired surrogate (a probe sending one, logged by the hub) then ends its worker's session as an
internal error, and the controller stops the whole run with "worker finished with a pending test".
The report's strings are escaped (`\\udc80`) instead; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


def utf8_safe(value: Any) -> Any:
    """`value` with every string that UTF-8 cannot encode backslash-escaped, through dicts, lists and tuples."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {utf8_safe(k): utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(utf8_safe(v) for v in value)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(config: pytest.Config, report: Any) -> Generator[None, Any, Any]:
    data = yield
    return utf8_safe(data)
