"""Wake-ups across processes: Redis pub/sub, with in-process delivery short-circuited.

Messages are hints that something changed; the database stays the truth, so a lost message
only delays a waiter until its own timeout, it never loses a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from backend.redis_conn import pipelined

logger = logging.getLogger("preloop.bus")

Listener = Callable[[str, dict[str, Any]], None]
PREFIX = "preloop:"
# Several messages published together travel as one: `{"o": origin, "m": {}, "b": [[topic, message], ...]}`
# on this topic (no listener's topic; a process of an older version delivers it to nobody).
BATCH_TOPIC = "~batch"
# Process-wide listeners by topic prefix (in-process caches dropping entries another process changed),
# and the started buses, so code without a hub at hand can still announce such a change.
_PREFIX_LISTENERS: dict[str, list[Listener]] = defaultdict(list)
_STARTED: weakref.WeakSet[Bus] = weakref.WeakSet()


def listen_everywhere(prefix: str, listener: Listener) -> None:
    """Call `listener` for every message whose topic starts with `prefix`, on any bus of this process."""
    if listener not in _PREFIX_LISTENERS[prefix]:
        _PREFIX_LISTENERS[prefix].append(listener)


async def broadcast(topic: str, message: dict[str, Any]) -> None:
    """Publish on every started bus of this process (to this process's listeners and, through Redis,
    to the other processes); with no bus started, only this process's prefix listeners hear it."""
    buses = list(_STARTED)
    for bus in buses:
        await bus.publish(topic, message)
    if not buses:
        _deliver_prefixed(topic, message)


def _deliver_prefixed(topic: str, message: dict[str, Any]) -> None:
    for prefix, listeners in list(_PREFIX_LISTENERS.items()):
        if topic.startswith(prefix):
            for listener in list(listeners):
                try:
                    listener(topic, message)
                except Exception:
                    logger.exception("bus listener failed", extra={"topic": topic})


class Bus:
    """Publish/subscribe on named topics. Listeners are plain callbacks run on the event loop."""

    def __init__(self, redis: Redis | None) -> None:
        self._redis = redis
        self._origin = uuid.uuid4().hex
        # How this process's own messages begin (`publish` writes the origin first): those come back
        # through the pattern subscription and are skipped before parsing.
        self._own_prefix = json.dumps({"o": self._origin})[:-1]
        self._own_prefix_bytes = self._own_prefix.encode()
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Messages waiting for the next pipeline, and the future of the replies of that pipeline.
        self._outbox: list[tuple[str, str]] = []  # (topic, the message as JSON)
        self._sent: asyncio.Future[list[Any]] | None = None

    async def start(self) -> None:
        _STARTED.add(self)
        if self._redis is None:
            self._ready.set()
            return
        self._task = asyncio.create_task(self._pump(), name="preloop-bus")
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        _STARTED.discard(self)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        await self.publish_many([(topic, message)])

    async def publish_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Deliver `(topic, message)` pairs in this process at once and send them to the others through
        Redis, waiting until they are sent. What every publisher of this process queues before the next
        pipeline is built goes out as one PUBLISH (`_add_outbox`), in the order it was published."""
        for topic, message in messages:
            self._deliver(topic, message)
        if self._redis is None or not messages:
            return
        # Encoded here, so a message that cannot be fails its own publisher, not the pipeline it joins.
        encoded = [(topic, json.dumps(message, default=str)) for topic, message in messages]
        loop = asyncio.get_running_loop()
        sent = self._sent
        if sent is None or sent.done() or sent.get_loop() is not loop:  # none queued (or one that failed)
            self._outbox = []
            sent = self._sent = pipelined(self._redis).submit(self._add_outbox)
        self._outbox.extend(encoded)
        await asyncio.wait({sent})  # shared with other publishers: our cancellation must not cancel it
        if sent.cancelled() or sent.exception() is not None:  # Redis is an accelerator: waiters fall back
            logger.error(  # on their timeouts
                "bus publish failed",
                exc_info=None if sent.cancelled() else sent.exception(),
                extra={"topic": messages[0][0]},
            )

    def _add_outbox(self, pipe: Pipeline) -> int:
        """Called as the pipeline is built: everything queued since the last one, as one PUBLISH (a single
        message on its own topic; several in a batch on `BATCH_TOPIC`, which an older process ignores)."""
        outbox, self._outbox, self._sent = self._outbox, [], None
        if len(outbox) == 1:
            topic, message = outbox[0]
            pipe.publish(PREFIX + topic, f"{self._own_prefix}, \"m\": {message}}}")
        else:
            batch = ", ".join(f"[{json.dumps(topic)}, {message}]" for topic, message in outbox)
            pipe.publish(PREFIX + BATCH_TOPIC, f"{self._own_prefix}, \"m\": {{}}, \"b\": [{batch}]}}")
        return 1

    def subscribe(self, topic: str, listener: Listener) -> Callable[[], None]:
        self._listeners[topic].add(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(topic)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[topic]

        return unsubscribe

    @contextlib.asynccontextmanager
    async def stream(self, topic: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue that receives every message on `topic` while the block runs."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)

        def put(_topic: str, message: dict[str, Any]) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

        unsubscribe = self.subscribe(topic, put)
        try:
            yield queue
        finally:
            unsubscribe()

    def _deliver(self, topic: str, message: dict[str, Any]) -> None:
        for listener in list(self._listeners.get(topic, ())):
            try:
                listener(topic, message)
            except Exception:
                logger.exception("bus listener failed", extra={"topic": topic})
        _deliver_prefixed(topic, message)

    async def _pump(self) -> None:
        assert self._redis is not None
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(PREFIX + "*")
                self._ready.set()
                async for raw in pubsub.listen():
                    if raw.get("type") != "pmessage":
                        continue
                    channel = raw["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    data = raw["data"]
                    own = self._own_prefix_bytes if isinstance(data, bytes) else self._own_prefix
                    if data.startswith(own):
                        continue  # delivered in-process when published
                    body = json.loads(data)
                    if "b" in body:
                        for topic, message in body["b"]:
                            self._deliver(topic, message)
                    else:
                        self._deliver(channel[len(PREFIX) :], body["m"])
            except asyncio.CancelledError:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except Exception:
                logger.exception("bus subscriber lost Redis; reconnecting")
                self._ready.set()
                await asyncio.sleep(1)
