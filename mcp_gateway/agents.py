"""Per-agent identity on streamable HTTP: each agent's own `Authorization: Bearer` key, checked with the hub."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass

from mcp_gateway.api_client import AgentIdentity, ApiClient
from mcp_gateway.errors import ApiUnavailableError, HubAuthError

logger = logging.getLogger(__name__)

KEY_SOURCE = "the agent's `Authorization: Bearer` key"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the identity the policy, approvals and audit see, and the hub client acting as it."""

    agent: AgentIdentity
    api: ApiClient | None


#: The caller of the request being served (set per request on HTTP; unset means the gateway's own key).
CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("preloop_caller", default=None)


@dataclass(slots=True)
class _Entry:
    caller: Caller
    checked: float


class AgentDirectory:
    """Agent keys checked with the hub (`GET /api/v1/agents/me`), each answer trusted for `ttl` seconds.

    A revoked key is refused at its next check, so within `ttl`. While the hub is unreachable a key it
    accepted before keeps working (fail closed for keys it has never seen).
    """

    def __init__(self, api_url: str, *, ttl: float = 30.0, size: int = 1024) -> None:
        self.api_url = api_url
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_agent: dict[str, ApiClient] = {}

    async def caller_for(self, key: str) -> Caller:
        digest = hashlib.sha256(key.encode()).hexdigest()
        entry = self._entries.get(digest)
        now = time.monotonic()
        if entry is not None and now - entry.checked < self.ttl:
            return entry.caller
        api = entry.caller.api if entry is not None and entry.caller.api is not None else None
        api = api or ApiClient(self.api_url, key, key_source=KEY_SOURCE)
        try:
            agent = await api.agent_me()
        except HubAuthError:
            self._drop(digest)
            if entry is None:
                await api.aclose()
            raise
        except ApiUnavailableError:
            if entry is not None:
                logger.warning("hub unreachable; trusting agent %s's key from its last check", entry.caller.agent.name)
                return entry.caller
            await api.aclose()
            raise
        caller = Caller(agent, api)
        self._entries[digest] = _Entry(caller, now)
        self._entries.move_to_end(digest)
        self._by_agent[agent.id] = api
        while len(self._entries) > self.size:
            _, old = self._entries.popitem(last=False)
            self._by_agent.pop(old.caller.agent.id, None)
        return caller

    def client_for_agent(self, agent_id: str) -> ApiClient | None:
        """The hub client acting as agent `agent_id`, if its key was seen (audit records go out under it)."""
        return self._by_agent.get(agent_id)

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self._by_agent.pop(entry.caller.agent.id, None)

    async def aclose(self) -> None:
        for entry in self._entries.values():
            if entry.caller.api is not None:
                await entry.caller.api.aclose()
        self._entries.clear()
        self._by_agent.clear()
