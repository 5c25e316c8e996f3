"""Gateway overhead: sequential allowed tools/call, direct vs through the gateway, over streamable HTTP.

Both sides run as separate processes (the demo upstream and `mcp_gateway.cli --http`), the client is the
SDK's own `mcp.Client`. Prints p50/p99 of both and their ratios; then holds N calls at once in one
gateway against a real hub (bench/_held.py) and releases each with one approval, timing
verdict-to-result. Ends with one RESULT line.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client

PYTHON = sys.executable
TOOL = "scale_service"
ARGS = {"service": "checkout-api", "replicas": 3, "environment": "staging"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, proc: subprocess.Popen[bytes], within: float = 30.0) -> None:
    with anyio.fail_after(within):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


async def timed_call(client: Client) -> float:
    start = time.perf_counter()
    result = await client.call_tool(TOOL, ARGS)
    elapsed = (time.perf_counter() - start) * 1000
    if result.is_error:
        raise RuntimeError(f"call failed: {result.content}")
    return elapsed


async def measure(direct_url: str, gateway_url: str, calls: int, warmup: int) -> tuple[list[float], list[float]]:
    """Alternate blocks of direct and gateway calls so machine noise hits both sides alike."""
    direct: list[float] = []
    through: list[float] = []
    async with Client(direct_url) as d, Client(gateway_url) as g:
        for _ in range(warmup):
            await timed_call(d)
            await timed_call(g)
        block = 50
        while len(direct) < calls:
            n = min(block, calls - len(direct))
            direct.extend([await timed_call(d) for _ in range(n)])
            through.extend([await timed_call(g) for _ in range(n)])
    return direct, through


POLICY = """\
version: "1"
servers:
  - {{name: demo, url: "http://127.0.0.1:{port}/mcp"}}
tools:
  - name: {tool}
    rules:
      - {{when: "args.environment == 'staging'", action: allow}}
      - {{action: deny, message: staging only in the benchmark}}
defaults: {{unknown_tools: deny}}
"""


async def main(calls: int, warmup: int) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up_port, gw_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "bench-policy.yaml"
        policy.write_text(POLICY.format(port=up_port, tool=TOOL))
        upstream = subprocess.Popen(  # noqa: ASYNC220 - started once, before any timing
            [PYTHON, "-m", "mcp_gateway.demo_upstream", "--http", f"127.0.0.1:{up_port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gateway = None
        try:
            await wait_for_port(up_port, upstream)
            gateway = subprocess.Popen(  # noqa: ASYNC220 - started once, before any timing
                [
                    PYTHON,
                    "-m",
                    "mcp_gateway.cli",
                    "--http",
                    f"127.0.0.1:{gw_port}",
                    "--policy",
                    str(policy),
                    "--data-dir",
                    str(Path(tmp) / "data"),
                    "--api-url",
                    "http://127.0.0.1:9",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await wait_for_port(gw_port, gateway)
            direct, through = await measure(
                f"http://127.0.0.1:{up_port}/mcp", f"http://127.0.0.1:{gw_port}/mcp", calls, warmup
            )
        finally:
            for proc in (gateway, upstream):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    d50, d99 = statistics.median(direct), percentile(direct, 0.99)
    g50, g99 = statistics.median(through), percentile(through, 0.99)
    print(f"direct  p50={d50:.3f}ms p99={d99:.3f}ms  ({calls} calls)")
    print(f"gateway p50={g50:.3f}ms p99={g99:.3f}ms  ({calls} calls)")
    print(f"ratio   p50={g50 / d50:.2f}x p99={g99 / d99:.2f}x  (target <=1.3x p50, <=1.5x p99)")
    return (
        f"direct_p50_ms={d50:.3f} gateway_p50_ms={g50:.3f} ratio_p50={g50 / d50:.2f} ratio_p99={g99 / d99:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--held", type=int, default=1000, help="calls held at once for the verdict part (0 skips)")
    ns = parser.parse_args()
    allow_path = anyio.run(main, ns.calls, ns.warmup)
    held, held_p99 = 0, float("nan")
    if ns.held:
        # N calls held at once in one gateway against a real hub, each released by one approval.
        sys.path.insert(0, str(Path(__file__).parent))
        from _held import run_held

        held, held_p50, held_p99 = run_held(ns.held)
        print(f"held    {held} calls at once: verdict-to-result p50={held_p50:.1f}ms p99={held_p99:.1f}ms")
    print(f"RESULT {allow_path} held={held} held_verdict_p99_ms={held_p99:.1f}")
