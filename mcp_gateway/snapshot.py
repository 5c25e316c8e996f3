"""The active policy snapshot: fetched from the hub and refreshed by long-poll, or read from a local file."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from mcp_gateway.api_client import ApiClient
from mcp_gateway.errors import GatewayError, NoPolicyError
from policies import Policy, PolicyError, load_policy

logger = logging.getLogger(__name__)

OnChange = Callable[[Policy], Awaitable[None]]


class PolicySnapshot:
    """Holds the last good policy; a bad or unreachable update never replaces it."""

    def __init__(self) -> None:
        self._policy: Policy | None = None
        self.version: int | None = None
        self.source_name = "<none>"
        self.source_text: str | None = None
        self.loaded = anyio.Event()
        self._listeners: list[OnChange] = []

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            raise NoPolicyError(
                "The gateway has no policy snapshot yet (the Preloop API has not answered), so it cannot "
                "judge this call. Try again shortly."
            )
        return self._policy

    @property
    def has_policy(self) -> bool:
        return self._policy is not None

    def on_change(self, listener: OnChange) -> None:
        self._listeners.append(listener)

    async def install(
        self, policy: Policy, *, version: int | None, source_name: str, source_text: str | None = None
    ) -> None:
        self._policy = policy
        self.source_text = source_text
        self.version = version
        self.source_name = source_name
        logger.info("policy %s (version %s, %s) is active", source_name, version, policy.version_hash[:12])
        try:
            for listener in self._listeners:
                await listener(policy)
        finally:
            # Set only once upstreams have been (re)applied, so a gateway that reports itself
            # ready already routes the policy's tools.
            self.loaded.set()

    async def load_file(self, path: Path) -> None:
        text = await anyio.Path(path).read_text(encoding="utf-8")
        await self.install(load_policy(text, source=str(path)), version=None, source_name=str(path), source_text=text)

    async def follow_api(self, api: ApiClient, *, wait: float = 30.0, retry: float = 2.0) -> None:
        """Fetch the active snapshot, then long-poll for newer versions forever."""
        backoff = retry
        while True:
            try:
                doc = await api.active_policy(
                    after=self.version if self.version is not None else None,
                    wait=wait if self.version is not None else None,
                )
            except GatewayError as exc:
                logger.warning("cannot refresh the policy (keeping the last good one): %s", exc.message)
                await anyio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            backoff = retry
            if doc is None or doc.version == self.version:
                continue
            try:
                policy = load_policy(doc.source, source=f"policy v{doc.version}")
            except PolicyError:
                logger.exception("policy version %s does not load; keeping the previous one", doc.version)
                self.version = doc.version
                continue
            await self.install(
                policy, version=doc.version, source_name=f"policy v{doc.version}", source_text=doc.source
            )
