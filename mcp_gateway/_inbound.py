"""uvicorn's HTTP protocol with the allow fast path settled below ASGI.

`FastLaneProtocol` keeps everything uvicorn does per connection (parsing, keep-alive, pipelining, flow
control, disconnects) and changes one step: a request `FastPathApp.eligible` accepts runs
`FastPathApp.answer` directly instead of going through the ASGI app, and its response goes out in one
write (status line, headers and body together), so the agent is woken once per result. When `answer`
declines (a held call, a progress request, anything unusual), the request runs through the ASGI app as
usual with its body replayed.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mcp_gateway.fastlane import FastPathApp, replay

logger = logging.getLogger(__name__)

_STATUS_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


def protocol_for(app: FastPathApp) -> type[HttpToolsProtocol]:
    """A protocol class bound to `app` (uvicorn instantiates it once per connection)."""
    return type("FastLaneProtocol", (FastLaneProtocol,), {"fastlane": app})


class FastLaneProtocol(HttpToolsProtocol):
    fastlane: FastPathApp

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if self.fastlane.eligible(cast(Any, cycle.scope)):
            task = self.loop.create_task(self._run_fast(cycle))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        super()._start_asgi_task(cycle, app)

    async def _run_fast(self, cycle: RequestResponseCycle) -> None:
        if cycle.more_body or cycle.waiting_for_100_continue:
            chunks = []
            while True:
                message = await cycle.receive()
                if message["type"] != "http.request":
                    return  # the agent went away before sending the whole request
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
        else:  # the usual case: the whole request arrived with its headers
            body = bytes(cycle.body)
            cycle.body = bytearray()
        try:
            answer = await self.fastlane.answer(body)
        except Exception:
            logger.exception("the gateway's fast path failed on a tools/call")
            if not cycle.disconnected:
                await cycle.send_500_response()
            return
        if answer is None:
            inner = self.fastlane.inner

            async def with_body(scope: Any, receive: Any, send: Any) -> None:
                await inner(scope, replay(body, receive), send)

            await cycle.run_asgi(with_body)
            return
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        head = [_STATUS_200]
        for name, value in cycle.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-length: %d\r\n" % len(answer))
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", answer]
        cycle.response_started = cycle.response_complete = True
        self.transport.write(b"".join(head))
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()
