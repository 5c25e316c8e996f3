"""Many concurrent delivery jobs, one statement: a window in which their requests are gathered.

A fan-out starts up to `max_jobs` deliveries at once in a worker; each would otherwise send its
own claim, its own read of the person, their preferences and devices, and its own `sent` mark.
A `Batch` collects what the jobs of one event loop ask for during a short window and answers
them all from one call. Each caller still waits for its own answer, so a job goes on only with
what the database said about its row; a failed call is handed to every caller in the batch.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

WINDOW = 0.02
"""How long the first caller waits for others to share its statement."""


class _Pending(Generic[K, V]):
    def __init__(self) -> None:
        self.items: list[tuple[K, asyncio.Future[V]]] = []
        self.flushing: asyncio.Task[None] | None = None


class Batch(Generic[K, V]):
    """`await batch.ask(item)` → `run(items)[i]` for that item, with `run` called once per window."""

    def __init__(self, run: Callable[[list[K]], Awaitable[list[V]]], *, window: float = WINDOW) -> None:
        self.run = run
        self.window = window
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pending[K, V]] = weakref.WeakKeyDictionary()

    async def ask(self, item: K) -> V:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:  # futures belong to one loop (tests run many)
            state = self._loops[loop] = _Pending()
        done: asyncio.Future[V] = loop.create_future()
        state.items.append((item, done))
        if state.flushing is None or state.flushing.done():
            state.flushing = loop.create_task(self._flush(state))
        return await done

    async def _flush(self, state: _Pending[K, V]) -> None:
        while state.items:
            await asyncio.sleep(self.window)
            batch, state.items = state.items, []
            try:
                answers = await self.run([item for item, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for (_, done), answer in zip(batch, answers, strict=True):
                    if not done.done():
                        done.set_result(answer)


def keyed(load: Callable[[list[K]], Awaitable[dict[K, V]]], default: V) -> Callable[[list[K]], Awaitable[list[V]]]:
    """A batch runner from a loader that answers a dict by key (missing keys get `default`)."""

    async def run(keys: list[K]) -> list[V]:
        found = await load(list(dict.fromkeys(keys)))
        return [found.get(key, default) for key in keys]

    return run
