"""What approval flows need from the running hub: the bus, the job queue and Redis (the hub satisfies it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from backend.bus import Bus
    from backend.redis_conn import RedisHandle


class Effects(Protocol):
    """The side effects a state change sets off after commit, and nothing else of the hub."""

    @property
    def bus(self) -> Bus:
        """Wake-ups and org events (publish)."""
        ...

    @property
    def jobs(self) -> ArqRedis | None:
        """The job queue: notification deliveries and deadlines (`notifications.enqueue_many`)."""
        ...

    @property
    def redis(self) -> RedisHandle | None:
        """The passkey step-up challenges live here."""
        ...
