"""Fixtures for gateway interop tests: real MCP servers (PyPI, npm, the SDK) and real gateways."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import pytest

from mcp_gateway.app import Gateway
from mcp_gateway.config import GatewaySettings
from tests.helpers import free_port

HERE = Path(__file__).parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
EVERYTHING = HERE / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
PROBE = HERE / "probe_upstream.py"


def closed_port_url() -> str:
    """An API URL nothing listens on: the hub is 'down'."""
    return f"http://127.0.0.1:{free_port()}"


async def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


@contextmanager
def spawned(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def everything_js() -> Path:
    """The npm `@modelcontextprotocol/server-everything` entry point."""
    if not EVERYTHING.exists():
        pytest.fail(
            "tests/interop/node_modules is missing: run `npm ci --prefix tests/interop` "
            "to install @modelcontextprotocol/server-everything for the interop tests"
        )
    return EVERYTHING


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    policy: str,
    *,
    api_url: str | None = None,
    hold_window: float = 5.0,
    data_dir: Path | None = None,
) -> AsyncIterator[Gateway]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy)
    settings = GatewaySettings(
        api_url=api_url or closed_port_url(),
        api_key=None,
        policy_file=policy_file,
        hold_window=hold_window,
        data_dir=data_dir or tmp_path / "gateway-data",
        startup_timeout=5.0,
    )
    async with Gateway(settings) as gateway:
        yield gateway


@asynccontextmanager
async def serving_http(gateway: Gateway) -> AsyncIterator[str]:
    """Serve `gateway` over streamable HTTP on a free port; yields its URL."""
    port = free_port()
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: gateway.serve_http("127.0.0.1", port, started=started))
        with anyio.fail_after(15):
            await started.wait()
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            tg.cancel_scope.cancel()


def child_pids() -> set[int]:
    """PIDs of this test process's direct children (the spawned stdio upstreams)."""
    me = os.getpid()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me:
            pids.add(int(entry.name))
    return pids


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
