"""Fast lanes for the allow path over streamable HTTP (2026-07-28 wire: one self-contained POST per request).

Inbound, `FastPathApp` (`mcp_gateway._inbound_lane`) answers `tools/call` POSTs straight from the ASGI scope
when the checkpoint can settle them at once (allow, deny, errors); held calls, progress requests and every
other method go to the SDK's app. Outbound, `HttpFastLane` (`mcp_gateway._outbound_lane`) posts `tools/call`
to a modern upstream over a pooled keep-alive connection (`_http1`) and returns the raw result dict. Both skip
model validation: the JSON-RPC result passes through as-is. PRELOOP_GATEWAY_FAST_PATH=0 turns the inbound lane
off (`FastPathApp.enabled`).
"""

from __future__ import annotations

from mcp_gateway._inbound_lane import FastCall, FastPathApp, replay
from mcp_gateway._outbound_lane import CLIENT_INFO, SERVER_INFO_META_KEY, HttpFastLane

__all__ = ["CLIENT_INFO", "SERVER_INFO_META_KEY", "FastCall", "FastPathApp", "HttpFastLane", "replay"]
