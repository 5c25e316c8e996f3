"""The `Channel` protocol every delivery channel implements, and the registry that finds them.

A channel module (email.py, webpush.py, webhook.py, web.py; slack.py and mattermost.py later)
defines one class with `kind` and `async send(message, target) -> Answer`, and exposes it as
`CHANNEL`. Add its module to `MODULES` below and it is used for every policy naming that kind.
"""

from __future__ import annotations

import functools
import importlib
import ssl
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx

MODULES: dict[str, str] = {
    "web": "backend.notifications.channels.web",
    "email": "backend.notifications.channels.email",
    "push": "backend.notifications.channels.webpush",
    "webhook": "backend.notifications.channels.webhook",
    "slack": "backend.notifications.channels.slack",
    "mattermost": "backend.notifications.channels.mattermost",
}
"""Channel kind → module holding its `CHANNEL`."""

CHAT_KINDS = frozenset({"slack", "mattermost"})
"""Channels that post once per request to an organization's channel, not once per approver."""


@dataclass(frozen=True)
class Recipient:
    user_id: str
    email: str
    name: str = ""


@dataclass(frozen=True)
class Argument:
    name: str
    value: str
    folded: bool = False
    """True when the value was cut to keep the message readable; the link shows it whole."""


@dataclass(frozen=True)
class Message:
    """What every message says, whatever the channel (the seed's "what to check")."""

    delivery_id: str
    event: str  # requested | escalated | reminder | outcome
    request_id: str
    status: str
    tool: str
    server: str
    arguments: list[Argument]
    agent: str
    owner: str
    created_at: str
    rule: str
    risk: str | None
    reason: str
    justification: str | None
    deadline: str | None
    deadline_epoch: float | None
    votes_needed: int
    quorum: int
    link: str
    tag: str
    title: str
    summary: str
    outcome: str | None = None
    passkey_required: bool = False
    critical: bool = False
    org_id: str = ""
    escalation_level: int = 0
    actions: dict[str, str] = field(default_factory=dict)
    """Decision → URL the recipient may use to decide (email links); empty when they may not."""

    def to_json(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "event": self.event,
            "request_id": self.request_id,
            "status": self.status,
            "tool": self.tool,
            "server": self.server,
            "arguments": {a.name: a.value for a in self.arguments},
            "agent": self.agent,
            "owner": self.owner,
            "created_at": self.created_at,
            "rule": self.rule,
            "risk": self.risk,
            "reason": self.reason,
            "justification": self.justification,
            "deadline": self.deadline,
            "votes_needed": self.votes_needed,
            "quorum": self.quorum,
            "link": self.link,
            "outcome": self.outcome,
            "escalation_level": self.escalation_level,
        }


@dataclass(frozen=True)
class Target:
    """Who receives the message and the organization's settings for this channel (secrets opened)."""

    recipient: Recipient
    config: dict[str, Any]
    secret: str | None
    hub: Any
    public_url: str


@dataclass(frozen=True)
class Answer:
    """A channel accepted the message; `detail` is what it said (message id, HTTP status...)."""

    detail: str = ""
    skipped: bool = False
    """Nothing to send to (no device, channel not configured): done, but not an acceptance."""


class ChannelError(Exception):
    """The channel refused or could not be reached. `permanent` errors are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Channel(Protocol):
    kind: ClassVar[str]

    async def send(self, message: Message, target: Target) -> Answer: ...


_LOADED: dict[str, Channel] = {}


def known_kinds() -> list[str]:
    return list(MODULES)


def get_channel(kind: str) -> Channel | None:
    """The channel for `kind`, or None when this hub has no such channel (yet)."""
    if kind in _LOADED:
        return _LOADED[kind]
    module = MODULES.get(kind)
    if module is None:
        return None
    channel: Channel = importlib.import_module(module).CHANNEL
    _LOADED[kind] = channel
    return channel


@functools.cache
def _tls() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def http_client(timeout: float) -> httpx.AsyncClient:
    """An HTTP client for one send. The TLS context is built once: building it per client costs
    tens of milliseconds of CPU, which a fan-out to hundreds of people pays hundreds of times."""
    return httpx.AsyncClient(timeout=timeout, verify=_tls(), follow_redirects=False)
