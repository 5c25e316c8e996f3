"""One person's notification choices: which channels, and quiet hours in their own timezone."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backend.errors import ValidationFailed
from backend.notifications.channels import known_kinds
from backend.notifications.tables import NotificationPreference
from backend.transactions import write_transaction

HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Preference:
    channels: list[str] | None  # None: every channel the policy names
    quiet_start: str | None
    quiet_end: str | None
    timezone: str

    def to_json(self) -> dict[str, Any]:
        quiet = {"start": self.quiet_start, "end": self.quiet_end} if self.quiet_start else None
        return {"channels": self.channels, "quiet_hours": quiet, "timezone": self.timezone}

    def wants(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels

    def quiet_until(self, at: datetime) -> datetime | None:
        """When quiet hours end, if `at` falls inside them; None otherwise."""
        if not self.quiet_start or not self.quiet_end:
            return None
        zone = ZoneInfo(self.timezone)
        local = at.astimezone(zone)
        start = time.fromisoformat(self.quiet_start)
        end = time.fromisoformat(self.quiet_end)
        now_t = local.time()
        inside = (start <= now_t < end) if start < end else (now_t >= start or now_t < end)
        if not inside:
            return None
        day = local.date() if now_t < end else local.date() + timedelta(days=1)
        return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


DEFAULT = Preference(None, None, None, "UTC")


def _from_row(row: dict[str, Any]) -> Preference:
    return Preference(row["channels"], row["quiet_start"], row["quiet_end"], row["timezone"] or "UTC")


async def get(user_id: Any) -> Preference:
    row = (
        await NotificationPreference.select()
        .where(NotificationPreference.user == user_id)
        .output(load_json=True)
        .first()
    )
    return DEFAULT if row is None else _from_row(row)


async def get_many(user_ids: list[Any]) -> dict[str, Preference]:
    """Preferences of many people in one query, by user id (as text); people who set none are absent."""
    rows = (
        await NotificationPreference.select()
        .where(NotificationPreference.user.is_in(user_ids))
        .output(load_json=True)
    )
    return {str(row["user"]): _from_row(row) for row in rows}


def parse(body: dict[str, Any]) -> Preference:
    channels = body.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ValidationFailed("channels must be a list of channel kinds", detail={"field": "channels"})
        unknown = sorted(set(channels) - set(known_kinds()) - {"slack", "mattermost"})
        if unknown:
            raise ValidationFailed(
                f"unknown channel(s): {', '.join(unknown)}; use {', '.join(known_kinds())}",
                detail={"field": "channels", "unknown": unknown},
            )
        channels = list(dict.fromkeys(channels))
    tz = str(body.get("timezone") or "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        raise ValidationFailed(
            f"unknown timezone {tz!r}; use an IANA name such as Europe/Paris", detail={"field": "timezone"}
        ) from None
    quiet = body.get("quiet_hours")
    start = end = None
    if quiet is not None:
        if not isinstance(quiet, dict):
            raise ValidationFailed(
                'quiet_hours must be {"start": "22:00", "end": "07:00"} or null', detail={"field": "quiet_hours"}
            )
        start, end = quiet.get("start"), quiet.get("end")
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, str) or not HHMM.match(value):
                raise ValidationFailed(
                    f"quiet_hours.{name} must be HH:MM (24-hour), e.g. 22:00", detail={"field": f"quiet_hours.{name}"}
                )
        if start == end:
            raise ValidationFailed("quiet_hours start and end must differ", detail={"field": "quiet_hours"})
    return Preference(channels, start, end, tz)


async def put(user_id: Any, body: dict[str, Any]) -> Preference:
    pref = parse(body)
    stamp = datetime.now(UTC)
    values: dict[Any, Any] = {
        NotificationPreference.channels: pref.channels,
        NotificationPreference.quiet_start: pref.quiet_start,
        NotificationPreference.quiet_end: pref.quiet_end,
        NotificationPreference.timezone: pref.timezone,
        NotificationPreference.updated_at: stamp,
    }
    async with write_transaction():
        exists = await NotificationPreference.exists().where(NotificationPreference.user == user_id)
        if exists:
            await NotificationPreference.update(values).where(NotificationPreference.user == user_id)
        else:
            await NotificationPreference.insert(
                NotificationPreference(
                    id=uuid.uuid4(),
                    user=user_id,
                    channels=pref.channels,
                    quiet_start=pref.quiet_start,
                    quiet_end=pref.quiet_end,
                    timezone=pref.timezone,
                    updated_at=stamp,
                )
            )
    return pref
