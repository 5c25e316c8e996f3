"""`preloop gateway`: run the MCP gateway over stdio or streamable HTTP."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from mcp_gateway.config import DEFAULT_API_URL

gateway_app = typer.Typer(help="The MCP gateway agents connect to instead of their MCP servers.")


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


#: The TypeScript SDK's default request timeout, which progress notifications do not reset.
CLIENT_TIMEOUT = 60.0


def check_hold_window(seconds: float, *, unsafe: bool) -> None:
    """Refuse a hold window the most common clients would not wait for (see docs/agents.md)."""
    if seconds <= 0:
        raise typer.BadParameter(f"--hold-window must be more than 0 seconds, got {seconds:g}")
    if seconds >= CLIENT_TIMEOUT and not unsafe:
        raise typer.BadParameter(
            f"--hold-window {seconds:g} is at or above {CLIENT_TIMEOUT:.0f} s: the TypeScript MCP SDK (Claude Code, "
            "Cursor, the Inspector) gives up on a request after 60 s even while progress arrives, so the agent "
            "would see a timeout instead of pending_approval, and a later approval would run nothing. Use a "
            "value below 60 (default 50), or add --hold-window-unsafe if every client you serve resets its "
            "timeout on progress."
        )


@gateway_app.command()
def gateway(
    stdio: Annotated[bool, typer.Option("--stdio", help="Serve one agent over stdin/stdout.")] = False,
    http: Annotated[str | None, typer.Option("--http", help="Serve streamable HTTP on HOST:PORT (path /mcp).")] = None,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", help=f"The Preloop hub. [default: PRELOOP_API_URL, else {DEFAULT_API_URL}]"),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Use this local policy file instead of the hub's (offline/dev)."),
    ] = None,
    hold_window: Annotated[
        float,
        typer.Option("--hold-window", help="Seconds a held call waits before returning pending_approval."),
    ] = 50.0,
    hold_window_unsafe: Annotated[
        bool,
        typer.Option(
            "--hold-window-unsafe",
            help="Allow a hold window of 60 s or more (clients that time out at 60 s will lose the answer).",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Audit spool and cached snapshot directory.")
    ] = None,
    require_agent_key: Annotated[
        bool,
        typer.Option(
            "--require-agent-key",
            help="HTTP: refuse clients that send no `Authorization: Bearer <agent key>` (no PRELOOP_API_KEY default).",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details to stderr.")] = False,
) -> None:
    """Proxy the active policy's MCP servers, enforcing the policy on every tools/call.

    The agent's API key comes from PRELOOP_API_KEY.
    """
    import anyio  # the SDK and server stack load only when a gateway really starts

    from mcp_gateway.app import Gateway
    from mcp_gateway.config import GatewaySettings

    if stdio == (http is not None):
        raise typer.BadParameter("pass exactly one of --stdio or --http HOST:PORT")
    check_hold_window(hold_window, unsafe=hold_window_unsafe)
    # stdout carries the MCP protocol in stdio mode, so logs always go to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # One line per upstream HTTP request would cost more than the proxy hop itself.
        for noisy in ("httpx", "httpx2", "mcp"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    base = GatewaySettings()
    settings = GatewaySettings(
        api_url=api_url or base.api_url,
        api_key=base.api_key,
        policy_file=policy,
        hold_window=hold_window,
        data_dir=data_dir or base.data_dir,
        require_agent_key=require_agent_key,
    )

    async def main() -> None:
        async with Gateway(settings) as gw:
            if http is not None:
                host, port = parse_host_port(http)
                typer.echo(f"preloop gateway: serving MCP on http://{host}:{port}/mcp", err=True)
                await gw.serve_http(host, port)
            else:
                await gw.serve_stdio()

    anyio.run(main, backend_options={"use_uvloop": True})


def demo_upstream_command(
    http: Annotated[
        str | None, typer.Option("--http", help="Serve streamable HTTP on HOST:PORT instead of stdio.")
    ] = None,
) -> None:
    """Run the bundled demo MCP server (deploy_production, drop_table, refund, scale_service, read_logs)."""
    from mcp_gateway.demo_upstream import run_demo

    run_demo(http)


if __name__ == "__main__":
    gateway_app()
