"""Pure pieces of notifications: SMTP URLs, quiet hours, webhook signatures, folded arguments, backoff."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from backend.errors import SettingsError, ValidationFailed
from backend.notifications import preferences
from backend.notifications.channel_settings import redact_smtp, smtp_options
from backend.notifications.channels.webhook import signature
from backend.notifications.compose import fold_arguments
from backend.notifications.sealed import SealBroken, seal, unseal
from backend.settings import load_settings


def test_smtp_url_forms_and_a_bad_one_named() -> None:
    assert smtp_options("smtp://u:p@mail.test:587?starttls=true") == {
        "hostname": "mail.test",
        "port": 587,
        "username": "u",
        "password": "p",
        "use_tls": False,
        "start_tls": True,
    }
    assert smtp_options("smtps://mail.test")["use_tls"] is True and smtp_options("smtps://mail.test")["port"] == 465
    assert smtp_options("smtp://mail.test")["start_tls"] is False
    assert redact_smtp("smtp://u:secret@mail.test:25") == "smtp://u@mail.test:25"
    with pytest.raises(SettingsError, match="PRELOOP_SMTP_URL"):
        load_settings({"PRELOOP_SMTP_URL": "mail.test:25"})
    settings = load_settings({"PRELOOP_SMTP_URL": "smtp://mail.test", "PRELOOP_SMTP_FROM": "a@b.c"})
    assert settings.notifications.smtp_url == "smtp://mail.test" and settings.notifications.smtp_from == "a@b.c"


def test_quiet_hours_across_midnight_in_the_persons_timezone() -> None:
    pref = preferences.parse({"quiet_hours": {"start": "22:00", "end": "07:00"}, "timezone": "Europe/Paris"})
    late = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)  # 23:30 in Paris
    assert pref.quiet_until(late) == datetime(2026, 12, 2, 6, 0, tzinfo=UTC)  # 07:00 Paris
    assert pref.quiet_until(datetime(2026, 12, 1, 12, 0, tzinfo=UTC)) is None
    with pytest.raises(ValidationFailed, match="unknown channel"):
        preferences.parse({"channels": ["pager"]})


def test_webhook_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k" * 16, 1700000000, body) == f"t=1700000000,v1={expected}"


def test_long_arguments_are_folded_and_short_ones_kept() -> None:
    folded = fold_arguments({"short": "x", "long": "y" * 250, "n": 3})
    assert [(a.name, a.folded) for a in folded] == [("short", False), ("long", True), ("n", False)]
    assert folded[1].value.endswith("… (50 more characters)")


def test_sealed_secrets_open_only_with_the_same_key() -> None:
    sealed = seal("key-one", "hunter2")
    assert "hunter2" not in sealed and unseal("key-one", sealed) == "hunter2"
    with pytest.raises(SealBroken, match="PRELOOP_SECRET_KEY"):
        unseal("key-two", sealed)
