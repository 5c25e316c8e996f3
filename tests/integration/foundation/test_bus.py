"""The bus across processes: a message reaches every other process's listeners through Redis, and the
publishing process's own listeners exactly once (in-process; its copy from Redis is skipped unparsed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from redis.asyncio import Redis

from backend.bus import BATCH_TOPIC, PREFIX, Bus


async def test_a_message_reaches_each_process_once(redis_url: str) -> None:
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    here, there = Bus(clients[0]), Bus(clients[1])
    await here.start()
    await there.start()
    topic = f"test:{uuid.uuid4().hex}"
    got: dict[str, list[Any]] = {"here": [], "there": []}
    here.subscribe(topic, lambda _t, m: got["here"].append(m))
    there.subscribe(topic, lambda _t, m: got["there"].append(m))
    parsed = 0
    real_loads = json.loads

    ours = [here._origin.encode(), there._origin.encode(), b"someone else"]

    def counting_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal parsed
        # Redis pub/sub is server-wide: other tests' processes publish meanwhile; count this test's messages.
        if any(origin in (data if isinstance(data, bytes) else str(data).encode()) for origin in ours):
            parsed += 1
        return real_loads(data, *args, **kwargs)

    import backend.bus as bus_module

    bus_module.json.loads = counting_loads  # type: ignore[assignment]
    try:
        for n in range(3):
            await here.publish(topic, {"n": n, "at": "é"})
        # `there` hears its own message at once and `here`'s through Redis: let those arrive first.
        async with asyncio.timeout(10):
            while len(got["there"]) < 3:
                await asyncio.sleep(0.01)
        await there.publish(topic, {"n": "from there"})
        # Every copy has gone through Redis once the other side has its last message.
        async with asyncio.timeout(10):
            while len(got["there"]) < 4 or len(got["here"]) < 4:
                await asyncio.sleep(0.01)
        await clients[0].publish(PREFIX + topic, json.dumps({"o": "someone else", "m": {"n": "raw"}}))
        async with asyncio.timeout(10):
            while len(got["here"]) < 5:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # nothing more arrives
    finally:
        bus_module.json.loads = real_loads
        await here.stop()
        await there.stop()
        for client in clients:
            await client.aclose()
    mine = [{"n": n, "at": "é"} for n in range(3)]
    assert got["here"] == [*mine, {"n": "from there"}, {"n": "raw"}]
    assert got["there"] == [*mine, {"n": "from there"}, {"n": "raw"}]
    # Parsed: each side's copies of the other's messages and the raw one; never its own.
    assert parsed == 3 + 1 + 2


async def test_messages_published_together_travel_as_one_in_order(redis_url: str) -> None:
    """What a process publishes before its next Redis pipeline is built goes out as one PUBLISH on the batch
    topic; the other process delivers every message of it, in order, on its own topic. A message that cannot
    be encoded fails its own publisher only; the rest of the batch still goes."""
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url), Redis.from_url(redis_url)]
    here, there = Bus(clients[0]), Bus(clients[1])
    await here.start()
    await there.start()
    topics = [f"test:{uuid.uuid4().hex}" for _ in range(3)]
    got: list[tuple[str, Any]] = []
    for topic in topics:
        there.subscribe(topic, lambda t, m: got.append((t, m)))
    raw = clients[2].pubsub()
    await raw.psubscribe(PREFIX + "*")  # what a process of an older version would see
    frames: list[tuple[str, Any]] = []

    async def read_frames() -> None:
        async for item in raw.listen():
            body = json.loads(item["data"]) if item["type"] == "pmessage" else {}
            if body.get("o") == here._origin:  # Redis pub/sub is server-wide: other tests' processes publish too
                frames.append((item["channel"].decode(), body))

    reader = asyncio.create_task(read_frames())
    sent = [(topics[n % 3], {"n": n, "text": "ü" * n}) for n in range(60)]
    try:
        outcomes = await asyncio.gather(
            *(here.publish(topic, message) for topic, message in sent[:30]),
            here.publish(topics[0], {"bad": {(1, 2): "a tuple key"}}),  # cannot be JSON
            here.publish_many(sent[30:]),
            return_exceptions=True,
        )
        assert [type(o) for o in outcomes] == [type(None)] * 30 + [TypeError, type(None)]
        async with asyncio.timeout(10):
            while len(got) < 60:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # nothing more arrives
    finally:
        reader.cancel()
        await here.stop()
        await there.stop()
        await raw.aclose()
        for client in clients:
            await client.aclose()
    assert got == sent
    batches = [body for channel, body in frames if channel == PREFIX + BATCH_TOPIC]
    assert batches and len(frames) < 10, [channel for channel, _ in frames]  # 60 messages, a few PUBLISHes
    assert all(body["m"] == {} for body in batches)  # an older process delivers an empty message to nobody
    unpacked = [
        (topic, message)
        for channel, body in frames
        for topic, message in (body["b"] if "b" in body else [(channel[len(PREFIX) :], body["m"])])
    ]
    assert unpacked == sent


async def test_a_failed_pipeline_fails_its_publishers_and_the_next_publish_goes(
    redis_url: str, caplog: Any
) -> None:
    client, listener_client = Redis.from_url(redis_url), Redis.from_url(redis_url)
    here, there = Bus(client), Bus(listener_client)
    await there.start()
    topic = f"test:{uuid.uuid4().hex}"
    got: list[Any] = []
    there.subscribe(topic, lambda _t, m: got.append(m))
    real_pipeline = client.pipeline
    failures = 1

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("Redis went away")
        return real_pipeline(*args, **kwargs)

    client.pipeline = pipeline  # type: ignore[method-assign]
    try:
        await asyncio.gather(here.publish(topic, {"n": 1}), here.publish(topic, {"n": 2}))  # logged, not raised
        assert [r.message for r in caplog.records if r.name == "preloop.bus"] == ["bus publish failed"] * 2
        await here.publish(topic, {"n": 3})
        async with asyncio.timeout(10):
            while not got:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    finally:
        await there.stop()
        await client.aclose()
        await listener_client.aclose()
    assert got == [{"n": 3}]  # the failed ones are hints lost; the next one is not stuck behind them
