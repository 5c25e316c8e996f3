"""Gateway settings: one dataclass; what comes from the environment is read by `backend.settings.load_gateway_env`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.settings import DEFAULT_API_URL, load_gateway_env

__all__ = ["DEFAULT_API_URL", "GatewaySettings"]


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How one gateway process runs."""

    api_url: str = field(default_factory=lambda: load_gateway_env().api_url)
    """PRELOOP_API_URL: the hub the gateway asks for policies, approvals and audit."""
    api_key: str | None = field(default_factory=lambda: load_gateway_env().api_key)
    """PRELOOP_API_KEY: the agent's API key; its identity feeds the policy and the audit."""
    policy_file: Path | None = None
    """A local policy file used instead of the hub's active policy (offline / development)."""
    hold_window: float = 50.0
    """Seconds a held call waits for a verdict before answering `pending_approval`."""
    data_dir: Path = field(default_factory=lambda: load_gateway_env().data_dir)
    """PRELOOP_GATEWAY_DATA_DIR: where the audit spool and the last good snapshot live."""
    policy_wait: float = 30.0
    """Seconds each policy long-poll waits for a newer version."""
    fast_path: bool = field(default_factory=lambda: load_gateway_env().fast_path)
    """PRELOOP_GATEWAY_FAST_PATH: 0 serves HTTP through uvicorn's own protocol and the SDK's ASGI app only."""
    require_agent_key: bool = False
    """Refuse HTTP clients that send no `Authorization: Bearer <agent key>` (instead of acting as PRELOOP_API_KEY)."""
    agent_key_ttl: float = field(default_factory=lambda: load_gateway_env().agent_key_ttl)
    """PRELOOP_GATEWAY_AGENT_KEY_TTL: seconds an agent key the hub accepted is trusted before a re-check."""
    startup_timeout: float = 10.0
    """Seconds to wait at start for the first policy before serving anyway (calls fail closed until it lands)."""
