"""The bus across processes: a message reaches every other process's listeners through Redis, and the
publishing process's own listeners exactly once (in-process; its copy from Redis is skipped unparsed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from redis.asyncio import Redis

from backend.bus import PREFIX, Bus


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

    def counting_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal parsed
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
