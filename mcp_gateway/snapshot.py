"""The active policy snapshot: fetched from the hub and refreshed by long-poll, or read from a local file."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from mcp_gateway.api_client import ApiClient
from mcp_gateway.errors import ApiUnavailableError, GatewayError, HubAuthError, NoPolicyError
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
        #: Where the policy in force came from: "hub", "cache" (hub unreachable), "file" or "none".
        self.origin = "none"
        #: The hub's last failure, while it lasts (None once it answers again).
        self.problem: GatewayError | None = None

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            if isinstance(self.problem, HubAuthError):
                raise HubAuthError(
                    f"The gateway cannot judge this call and did not run it: {self.problem.message}",
                    http_status=self.problem.http_status,
                    code=self.problem.code,
                )
            raise NoPolicyError(
                "The gateway has no policy snapshot yet (the Preloop API has not answered), so it cannot "
                "judge this call. Try again shortly."
            )
        return self._policy

    def hub_failed(self, error: GatewayError) -> None:
        """Remember why the hub is not answering; a refused key is logged loudly, once per change."""
        if self.problem is None or self.problem.message != error.message:
            if isinstance(error, HubAuthError):
                logger.error("%s", error.message)
            else:
                logger.warning("cannot reach the hub for the policy (keeping the last good one): %s", error.message)
        self.problem = error

    def hub_answered(self) -> None:
        if self.problem is not None:
            logger.info("the hub answers again")
        self.problem = None

    @property
    def has_policy(self) -> bool:
        return self._policy is not None

    def on_change(self, listener: OnChange) -> None:
        self._listeners.append(listener)

    async def install(
        self,
        policy: Policy,
        *,
        version: int | None,
        source_name: str,
        source_text: str | None = None,
        origin: str = "hub",
    ) -> None:
        self._policy = policy
        self.source_text = source_text
        self.version = version
        self.source_name = source_name
        self.origin = origin
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
        policy = load_policy(text, source=str(path))
        await self.install(policy, version=None, source_name=str(path), source_text=text, origin="file")

    async def fetch_first(self, api: ApiClient, *, within: float) -> bool:
        """Ask the hub for the active policy, waiting at most `within` s; True when it is installed.

        False when the hub did not give one: unreachable (the caller may fall back to its cache) or
        refusing (a bad key, no active policy: the caller must not, see `problem`).
        """
        try:
            with anyio.fail_after(within):
                doc = await api.active_policy()
        except TimeoutError:
            self.hub_failed(ApiUnavailableError(f"the Preloop API did not answer within {within:.0f} s"))
            return False
        except GatewayError as exc:
            self.hub_failed(exc)
            return False
        self.hub_answered()
        if doc is None:
            return False
        await self._install_doc(doc.version, doc.source)
        return self.origin == "hub"

    @property
    def hub_unreachable(self) -> bool:
        return isinstance(self.problem, ApiUnavailableError)

    async def follow_api(self, api: ApiClient, *, wait: float = 30.0, retry: float = 2.0) -> None:
        """Long-poll the hub for newer versions forever (a plain fetch while not serving the hub's)."""
        backoff = retry
        while True:
            live = self.origin == "hub" and self.version is not None
            try:
                doc = await api.active_policy(
                    after=self.version if live else None,
                    wait=wait if live else None,
                )
            except GatewayError as exc:
                self.hub_failed(exc)
                await anyio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            self.hub_answered()
            backoff = retry
            if doc is None:
                continue
            if doc.version == self.version:
                if self.origin == "cache":
                    self.origin = "hub"
                    logger.info("the hub confirms the cached policy version %s", doc.version)
                continue
            await self._install_doc(doc.version, doc.source)

    async def _install_doc(self, version: int, source: str) -> None:
        try:
            policy = load_policy(source, source=f"policy v{version}")
        except PolicyError:
            logger.exception("policy version %s does not load; keeping the previous one", version)
            self.version = version
            return
        await self.install(policy, version=version, source_name=f"policy v{version}", source_text=source)
