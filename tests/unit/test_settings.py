from pathlib import Path

import pytest

from backend.errors import SettingsError
from backend.settings import DEFAULT_PORT, load_client_settings, load_settings


def test_defaults_are_embedded_mode() -> None:
    settings = load_settings({})
    assert settings.database.embedded and settings.redis.embedded
    assert settings.server.port == DEFAULT_PORT
    assert settings.database_url == f"sqlite:///{(Path('.preloop') / 'preloop.db').resolve()}"


def test_scaled_mode_by_environment_only() -> None:
    settings = load_settings(
        {"PRELOOP_DATABASE_URL": "postgres://u@db:5432/preloop", "PRELOOP_REDIS_URL": "redis://cache:6379/0"}
    )
    assert not settings.database.embedded and not settings.redis.embedded
    assert settings.database_url == "postgres://u@db:5432/preloop"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("PRELOOP_DATABASE_URL", "mysql://x/y", "postgres://"),
        ("PRELOOP_DATABASE_URL", "postgres://host-only", "needs a host and a database"),
        ("PRELOOP_DATABASE_URL", "postgres://h:notaport/db", "port is not a number"),
        ("PRELOOP_DATABASE_URL", "sqlite://relative.db", "sqlite:///"),
        ("PRELOOP_REDIS_URL", "http://cache", "redis://"),
        ("PRELOOP_REDIS_URL", "redis://", "needs a host"),
        ("PRELOOP_PORT", "eighty", "whole number"),
        ("PRELOOP_PORT", "70000", "between 1 and 65535"),
        ("PRELOOP_LOG_LEVEL", "loud", "debug, info, warning, error"),
        ("PRELOOP_DEMO", "maybe", "true or false"),
        ("PRELOOP_PUBLIC_URL", "ftp://x", "http://"),
    ],
)
def test_bad_values_name_the_variable_the_value_and_the_fix(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    message = caught.value.message
    assert message.startswith(f"{variable}={value!r}")
    assert fragment in message
    assert "\n" not in message


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings({"PRELOOP_DATA_DIR": str(tmp_path)})
    first = settings.secret_key()
    assert len(first) > 40
    assert settings.secret_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_client_settings_read_only_the_api_variables() -> None:
    assert load_client_settings({}).api_url == "http://127.0.0.1:8686"
    client = load_client_settings({"PRELOOP_API_URL": " https://hub.example.com/ ", "PRELOOP_API_KEY": "pl_k",
                                   "PRELOOP_PORT": "not-a-port"})  # a hub setting never gets in the way
    assert (client.api_url, client.api_key) == ("https://hub.example.com", "pl_k")
    with pytest.raises(SettingsError, match=r"PRELOOP_API_URL='hub:8686': use the hub's address"):
        load_client_settings({"PRELOOP_API_URL": "hub:8686"})
