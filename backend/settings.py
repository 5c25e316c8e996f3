"""Every setting Preloop reads, from environment variables, validated once."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from backend.errors import SettingsError

DEFAULT_PORT = 8686
DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def _env(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, default).strip()


def _int(env: Mapping[str, str], name: str, default: int, *, lo: int, hi: int) -> int:
    raw = _env(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, raw, f"must be a whole number between {lo} and {hi}") from None
    if not lo <= value <= hi:
        raise SettingsError(name, raw, f"must be between {lo} and {hi}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _env(env, name).lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(name, raw, "must be true or false")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _env(env, name).lower() or default
    if raw not in choices:
        raise SettingsError(name, raw, f"must be one of: {', '.join(choices)}")
    return raw


def validate_database_url(url: str, name: str = "PRELOOP_DATABASE_URL") -> str:
    parts = urlsplit(url)
    if parts.scheme in {"postgres", "postgresql"}:
        # A server on this machine can be reached through its unix socket directory (libpq's `?host=`):
        # postgres://user@/db?host=/var/run/postgresql (no TCP; see docs/deploy.md).
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        if (not parts.hostname and not socket_dir.startswith("/")) or not parts.path.strip("/"):
            raise SettingsError(
                name, url, "a PostgreSQL URL needs a host and a database: postgres://user@host:5432/db, or "
                "postgres://user@/db?host=/var/run/postgresql for a local server's socket directory",
            )
        try:
            _ = parts.port
        except ValueError:
            raise SettingsError(name, url, "the port is not a number") from None
        return url
    if parts.scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise SettingsError(name, url, "a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return url
    raise SettingsError(name, url, "use postgres://user@host:5432/db or sqlite:///path/to/preloop.db")


def validate_redis_url(url: str, name: str = "PRELOOP_REDIS_URL") -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise SettingsError(name, url, "use redis://host:6379/0, rediss://… or unix:///path/redis.sock")
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingsError(name, url, "a Redis URL needs a host: redis://127.0.0.1:6379/0")
    try:
        _ = parts.port
    except ValueError:
        raise SettingsError(name, url, "the port is not a number") from None
    return url


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    """PRELOOP_HOST: address the hub listens on."""
    port: int = DEFAULT_PORT
    """PRELOOP_PORT: port the hub listens on."""
    public_url: str = ""
    """PRELOOP_PUBLIC_URL: URL people reach the hub at (links in notifications); default http://host:port."""
    data_dir: Path = Path(".preloop")
    """PRELOOP_DATA_DIR: embedded database, embedded Redis socket, secrets."""
    event_loop: str = "uvloop"
    """PRELOOP_EVENT_LOOP: uvloop (the default where it is installed) or asyncio (the standard library's)."""
    fast_path: bool = True
    """PRELOOP_API_FAST_PATH: 0 sends every request through Litestar, the agents' approval cycle too
    (`backend.fastlane`)."""

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def web_origin(self, request_base_url: str) -> str:
        """Origin passkeys are bound to: PRELOOP_PUBLIC_URL's when set, else the one the request reached."""
        parts = urlsplit(self.public_url or request_base_url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""
    """PRELOOP_DATABASE_URL: postgres://… for scaled mode; empty means SQLite in the data dir."""

    @property
    def embedded(self) -> bool:
        return not self.url or self.url.startswith("sqlite:")


@dataclass(frozen=True)
class RedisSettings:
    url: str = ""
    """PRELOOP_REDIS_URL: redis://… for scaled mode; empty means an embedded Redis the hub starts."""

    @property
    def embedded(self) -> bool:
        return not self.url


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    """PRELOOP_LOG_LEVEL: debug, info, warning or error."""
    format: str = "json"
    """PRELOOP_LOG_FORMAT: json (one object a line) or text."""


@dataclass(frozen=True)
class SecuritySettings:
    secret_key: str = ""
    """PRELOOP_SECRET_KEY: signs sessions and links; generated into the data dir when empty."""
    session_hours: int = 12
    """PRELOOP_SESSION_HOURS: how long a console/PWA login lasts."""
    login_max_failures: int = 10
    """PRELOOP_LOGIN_MAX_FAILURES: wrong passwords for one account before it is locked out."""
    lockout_seconds: int = 900
    """PRELOOP_LOCKOUT_SECONDS: how long a lockout (and the failure-counting window) lasts."""
    address_max_failures: int = 100
    """PRELOOP_ADDRESS_MAX_FAILURES: failed passwords, keys or sessions from one address per window."""


@dataclass(frozen=True)
class ApprovalSettings:
    max_wait_seconds: int = 60
    """PRELOOP_MAX_WAIT_SECONDS: the longest a single long-poll (/approvals/wait, /policies/active?wait=) may hold."""
    sweep_seconds: int = 5
    """PRELOOP_SWEEP_SECONDS: how often the worker's backstop sweep looks for missed deadlines."""


def validate_smtp_url(url: str, name: str = "PRELOOP_SMTP_URL") -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise SettingsError(name, url, "use smtp://user:pass@host:587?starttls=true or smtps://user:pass@host:465")
    try:
        _ = parts.port
    except ValueError:
        raise SettingsError(name, url, "the port is not a number") from None
    return url


@dataclass(frozen=True)
class NotificationSettings:
    smtp_url: str = ""
    """PRELOOP_SMTP_URL: default mail server, smtp://user:pass@host:port (?starttls=true) or smtps://…"""
    smtp_from: str = ""
    """PRELOOP_SMTP_FROM: default sender address of notification mail, e.g. Preloop <preloop@example.com>."""
    max_attempts: int = 8
    """PRELOOP_NOTIFY_MAX_ATTEMPTS: tries per delivery before it is marked failed."""
    backoff_seconds: float = 2.0
    """PRELOOP_NOTIFY_BACKOFF_MS: wait before the first retry (milliseconds); doubles each try up to the cap."""
    backoff_cap_seconds: float = 300.0
    """PRELOOP_NOTIFY_BACKOFF_CAP_SECONDS: the longest wait between two tries."""
    send_timeout_seconds: float = 20.0
    """PRELOOP_NOTIFY_SEND_TIMEOUT_SECONDS: how long one channel may take to accept one message."""


@dataclass(frozen=True)
class ChatSettings:
    slack_bot_token: str = ""
    """PRELOOP_SLACK_BOT_TOKEN: default Slack bot token (xoxb-…) for organizations that set none."""
    slack_signing_secret: str = ""
    """PRELOOP_SLACK_SIGNING_SECRET: the Slack app's signing secret; interaction callbacks are checked with it."""
    slack_channel: str = ""
    """PRELOOP_SLACK_CHANNEL: default Slack channel id (C…) requests are posted to."""
    slack_api_url: str = "https://slack.com/api/"
    """PRELOOP_SLACK_API_URL: base URL of the Slack Web API (a local stand-in in tests)."""
    mattermost_url: str = ""
    """PRELOOP_MATTERMOST_URL: default Mattermost server, e.g. https://chat.example.com."""
    mattermost_token: str = ""
    """PRELOOP_MATTERMOST_TOKEN: default Mattermost bot access token."""
    mattermost_channel: str = ""
    """PRELOOP_MATTERMOST_CHANNEL: default Mattermost channel id requests are posted to."""


@dataclass(frozen=True)
class DemoSettings:
    enabled: bool = True
    """PRELOOP_DEMO: on first start create a demo org, an admin login and the demo policy."""


@dataclass(frozen=True)
class ObservabilitySettings:
    metrics_token: str = ""
    """PRELOOP_METRICS_TOKEN: when set, /metrics needs `Authorization: Bearer <token>`; empty leaves it open."""


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    log: LogSettings = field(default_factory=LogSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    notifications: NotificationSettings = field(default_factory=NotificationSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.server.data_dir / 'preloop.db').resolve()}"

    def secret_key(self) -> str:
        """The configured key, else one kept in the data dir (created on first use)."""
        if self.security.secret_key:
            return self.security.secret_key
        path = self.server.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.server.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        # Created 0600 from the start (no window where another user could read it); O_EXCL: if two
        # processes race on first start, the loser reads the winner's key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


@dataclass(frozen=True)
class ClientSettings:
    api_url: str = DEFAULT_API_URL
    """PRELOOP_API_URL: the hub that API commands (`preloop approvals ...`) talk to."""
    api_key: str = ""
    """PRELOOP_API_KEY: the API key those commands authenticate with (an approver or admin key)."""


@dataclass(frozen=True)
class GatewayEnvSettings:
    """What an MCP gateway process (`preloop gateway`, the hub's embedded one) reads from its environment.

    `mcp_gateway.config.GatewaySettings` takes its defaults from here; command-line flags override them.
    """

    api_url: str = DEFAULT_API_URL
    """PRELOOP_API_URL: the hub the gateway asks for policies, approvals and audit (`--api-url` overrides)."""
    api_key: str | None = None
    """PRELOOP_API_KEY: the agent's API key; its identity feeds the policy and the audit."""
    data_dir: Path = Path(".preloop/gateway")
    """PRELOOP_GATEWAY_DATA_DIR: where the gateway keeps its audit spool and last good policy snapshot."""
    fast_path: bool = True
    """PRELOOP_GATEWAY_FAST_PATH: 0 serves HTTP through uvicorn's own protocol and the SDK's ASGI app only."""
    agent_key_ttl: float = 30.0
    """PRELOOP_GATEWAY_AGENT_KEY_TTL: seconds an agent key the hub accepted is trusted before a re-check."""


def load_gateway_env(env: Mapping[str, str] | None = None) -> GatewayEnvSettings:
    """Read the gateway's variables; unset ones keep their defaults."""
    env = os.environ if env is None else env
    raw_ttl = env.get("PRELOOP_GATEWAY_AGENT_KEY_TTL", "30")
    try:
        agent_key_ttl = float(raw_ttl)
    except ValueError:
        raise SettingsError("PRELOOP_GATEWAY_AGENT_KEY_TTL", raw_ttl, "must be a number of seconds, e.g. 30") from None
    return GatewayEnvSettings(
        api_url=env.get("PRELOOP_API_URL", DEFAULT_API_URL),
        api_key=env.get("PRELOOP_API_KEY"),
        data_dir=Path(env.get("PRELOOP_GATEWAY_DATA_DIR", ".preloop/gateway")),
        fast_path=env.get("PRELOOP_GATEWAY_FAST_PATH", "1") != "0",
        agent_key_ttl=agent_key_ttl,
    )


@dataclass(frozen=True)
class ShellSettings:
    """What the `preloop` admin commands that act on the database directly read about their shell."""

    user: str = ""
    """USER: the login name of the shell running the command, recorded as the command's actor in the audit."""


def load_shell_settings(env: Mapping[str, str] | None = None) -> ShellSettings:
    env = os.environ if env is None else env
    return ShellSettings(user=_env(env, "USER"))


def load_client_settings(env: Mapping[str, str] | None = None) -> ClientSettings:
    """Read only what a client of the REST API needs, so a hub's own settings never get in its way."""
    env = os.environ if env is None else env
    api_url = _env(env, "PRELOOP_API_URL") or ClientSettings.api_url
    parts = urlsplit(api_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise SettingsError("PRELOOP_API_URL", api_url, "use the hub's address, e.g. http://127.0.0.1:8686")
    return ClientSettings(api_url=api_url.rstrip("/"), api_key=_env(env, "PRELOOP_API_KEY"))


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read and validate every PRELOOP_* variable; raise SettingsError naming the bad one."""
    env = os.environ if env is None else env
    db_url = _env(env, "PRELOOP_DATABASE_URL")
    if db_url:
        validate_database_url(db_url)
    redis_url = _env(env, "PRELOOP_REDIS_URL")
    if redis_url:
        validate_redis_url(redis_url)
    public_url = _env(env, "PRELOOP_PUBLIC_URL")
    if public_url and urlsplit(public_url).scheme not in {"http", "https"}:
        raise SettingsError("PRELOOP_PUBLIC_URL", public_url, "must start with http:// or https://")
    smtp_url = _env(env, "PRELOOP_SMTP_URL")
    if smtp_url:
        validate_smtp_url(smtp_url)
    env_port = _int(env, "PRELOOP_PORT", DEFAULT_PORT, lo=1, hi=65535)
    server = ServerSettings(
        host=str(overrides.get("host") or _env(env, "PRELOOP_HOST", "127.0.0.1")),
        port=int(str(overrides.get("port") or env_port)),
        public_url=public_url.rstrip("/"),
        data_dir=Path(str(overrides.get("data_dir") or _env(env, "PRELOOP_DATA_DIR", ".preloop"))),
        event_loop=_choice(env, "PRELOOP_EVENT_LOOP", "uvloop", ("uvloop", "asyncio")),
        fast_path=_choice(env, "PRELOOP_API_FAST_PATH", "1", ("1", "0")) == "1",
    )
    return Settings(
        server=server,
        database=DatabaseSettings(url=db_url),
        redis=RedisSettings(url=redis_url),
        log=LogSettings(
            level=_choice(env, "PRELOOP_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            format=_choice(env, "PRELOOP_LOG_FORMAT", "json", ("json", "text")),
        ),
        security=SecuritySettings(
            secret_key=_env(env, "PRELOOP_SECRET_KEY"),
            session_hours=_int(env, "PRELOOP_SESSION_HOURS", 12, lo=1, hi=24 * 90),
            login_max_failures=_int(env, "PRELOOP_LOGIN_MAX_FAILURES", 10, lo=1, hi=1000),
            lockout_seconds=_int(env, "PRELOOP_LOCKOUT_SECONDS", 900, lo=1, hi=86400),
            address_max_failures=_int(env, "PRELOOP_ADDRESS_MAX_FAILURES", 100, lo=1, hi=100_000),
        ),
        approvals=ApprovalSettings(
            max_wait_seconds=_int(env, "PRELOOP_MAX_WAIT_SECONDS", 60, lo=1, hi=3600),
            sweep_seconds=_int(env, "PRELOOP_SWEEP_SECONDS", 5, lo=1, hi=3600),
        ),
        chat=ChatSettings(
            slack_bot_token=_env(env, "PRELOOP_SLACK_BOT_TOKEN"),
            slack_signing_secret=_env(env, "PRELOOP_SLACK_SIGNING_SECRET"),
            slack_channel=_env(env, "PRELOOP_SLACK_CHANNEL"),
            slack_api_url=(_env(env, "PRELOOP_SLACK_API_URL") or ChatSettings.slack_api_url).rstrip("/") + "/",
            mattermost_url=_env(env, "PRELOOP_MATTERMOST_URL").rstrip("/"),
            mattermost_token=_env(env, "PRELOOP_MATTERMOST_TOKEN"),
            mattermost_channel=_env(env, "PRELOOP_MATTERMOST_CHANNEL"),
        ),
        demo=DemoSettings(enabled=_bool(env, "PRELOOP_DEMO", True)),
        observability=ObservabilitySettings(metrics_token=_env(env, "PRELOOP_METRICS_TOKEN")),
        notifications=NotificationSettings(
            smtp_url=smtp_url,
            smtp_from=_env(env, "PRELOOP_SMTP_FROM"),
            max_attempts=_int(env, "PRELOOP_NOTIFY_MAX_ATTEMPTS", 8, lo=1, hi=100),
            backoff_seconds=float(_int(env, "PRELOOP_NOTIFY_BACKOFF_MS", 2000, lo=1, hi=3_600_000)) / 1000,
            backoff_cap_seconds=float(_int(env, "PRELOOP_NOTIFY_BACKOFF_CAP_SECONDS", 300, lo=1, hi=86_400)),
            send_timeout_seconds=float(_int(env, "PRELOOP_NOTIFY_SEND_TIMEOUT_SECONDS", 20, lo=1, hi=300)),
        ),
    )
