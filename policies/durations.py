"""Durations written as seconds (``600``) or with units (``"10m"``, ``"1h30m"``, ``"2d"``)."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)([dhms])")
_WHOLE = re.compile(r"^(?:\d+[dhms])+$")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: object) -> int:
    """Seconds in ``value``; raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(  # noqa: TRY004 - callers catch ValueError for every bad duration
            "a duration is a number of seconds or a string like '10m' or '1h30m'"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.isdigit():
            return int(text)
        if text and _WHOLE.match(text):
            units = [unit for _, unit in _PART.findall(text)]
            if len(set(units)) != len(units) or units != sorted(units, key="dhms".index):
                raise ValueError("units must appear once each, largest first (d, h, m, s)")
            return sum(int(n) * _UNIT[unit] for n, unit in _PART.findall(text))
    raise ValueError("a duration is a number of seconds or a string like '10m' or '1h30m'")


def format_duration(seconds: int) -> str:
    """The shortest unit string for ``seconds`` (``5400`` -> ``"1h30m"``)."""
    if seconds == 0:
        return "0s"
    out = []
    for unit in "dhms":
        count, seconds = divmod(seconds, _UNIT[unit])
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
