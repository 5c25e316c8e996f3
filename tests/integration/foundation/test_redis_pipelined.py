"""Concurrent Redis commands share one pipeline: each caller gets its own replies, or its own error."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from backend.redis_conn import pipelined


async def test_concurrent_callers_share_round_trips_and_get_their_own_replies(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    sent: list[int] = []
    original = Pipeline.execute

    async def counting(self: Pipeline, raise_on_error: bool = True) -> list[object]:
        sent.append(len(self.command_stack))
        return await original(self, raise_on_error=raise_on_error)

    key = f"pipelined-test:{uuid.uuid4().hex}"

    def incr(n: int):  # type: ignore[no-untyped-def]
        def add(pipe: Pipeline) -> int:
            for _ in range(n):
                pipe.incr(key)
            return n

        return add

    def broken(pipe: Pipeline) -> int:
        pipe.lpush(key, "x")  # a list command on a string key: a WRONGTYPE reply for this caller only
        return 1

    try:
        Pipeline.execute = counting  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(pipelined(client).run(incr(n)) for n in (1, 2, 3)),
            pipelined(client).run(broken),
            return_exceptions=True,
        )
    finally:
        Pipeline.execute = original  # type: ignore[method-assign]
        await client.delete(key)
        await client.aclose()
    assert results[0] == [1]
    assert results[1] == [2, 3]
    assert results[2] == [4, 5, 6]
    assert isinstance(results[3], ResponseError)
    assert sent == [7]  # seven commands from four callers, one round trip


async def test_a_failed_round_trip_reaches_every_caller_and_the_next_one_works(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        await client.aclose()
        dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        with pytest.raises(Exception, match=r"(?i)connect"):
            await pipelined(dead).run(lambda pipe: pipe.ping() and 1)
        await dead.aclose()
        client = Redis.from_url(redis_url)
        assert await pipelined(client).run(lambda pipe: pipe.ping() and 1) == [True]
    finally:
        await client.aclose()
