"""The `preloop` command: run the hub, the worker and the gateway; bootstrap and script the hub."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from backend.errors import PreloopError
from backend.settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="preloop",
    help="Preloop: approval hub and MCP firewall for AI agents' tool calls.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
user_app = typer.Typer(help="People who approve, administer or watch.", no_args_is_help=True)
team_app = typer.Typer(help="Teams of approvers.", no_args_is_help=True)
key_app = typer.Typer(help="API keys for agents and integrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(team_app, name="team")
app.add_typer(key_app, name="key")


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except PreloopError as exc:
        raise fail(exc.message) from None


def _run_db(settings: Settings, work: Callable[[], Awaitable[T]], *, migrate: bool = True) -> T:
    """Connect, migrate (unless told not to), run `work`, disconnect; expected errors become one line."""
    from backend import db

    async def main() -> T:
        engine = await db.connect(settings.database_url)
        try:
            if migrate:
                await db.migrate()
            return await work()
        finally:
            await db.disconnect(engine)

    try:
        return asyncio.run(main())
    except PreloopError as exc:
        raise fail(exc.message) from None


async def _org_id() -> Any:
    from backend.accounts import service
    from backend.accounts.tables import Organization

    if await Organization.count() == 0:
        return (await service.create_org("Default", "default"))["id"]
    return (await service.default_org())["id"]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise fail(
                    f"port {port} on {host} is already in use (is another `preloop serve` running?); "
                    "choose another with --port or PRELOOP_PORT"
                ) from None
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on [env PRELOOP_HOST, default 127.0.0.1]."),
    port: int = typer.Option(None, min=1, max=65535, help="Port [env PRELOOP_PORT, default 8686]."),
    data_dir: Path = typer.Option(None, help="Embedded database, Redis and secrets [env PRELOOP_DATA_DIR]."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Run the API only; start `preloop worker` apart."),
    gateway_port: int = typer.Option(
        None, min=0, max=65535,
        help="Also run an MCP gateway on this port (default PORT+1 in embedded mode, using the demo agent key; "
        "0 turns it off).",
    ),
) -> None:
    """Run the hub: API, console, PWA and (unless --no-worker) the job worker, in one process."""
    import uvicorn

    from backend.app import create_app
    from backend.demo import ensure_demo
    from backend.hub import Hub
    from backend.logs import configure_logging

    settings = _settings(host=host, port=port, data_dir=data_dir)
    configure_logging(settings.log.level, settings.log.format)
    # Everything the hub writes (database, embedded Redis data, keys, secret) is for its user only.
    os.umask(0o077)
    _check_port_free(settings.server.host, settings.server.port)
    if gateway_port:
        _check_port_free(settings.server.host, gateway_port)

    class HubServer(uvicorn.Server):
        """uvicorn without its own signal handling: it re-raises SIGTERM after serving, which would
        kill the process before `hub.stop()` runs. `main` handles SIGINT and SIGTERM alike."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    async def main() -> bool:
        hub = Hub(settings)
        server: uvicorn.Server | None = None
        starting = asyncio.current_task()

        def on_signal(signum: int) -> None:
            logging.getLogger("preloop.hub").info("stopping", extra={"signal": signal.Signals(signum).name})
            hub.begin_shutdown()  # long-polls answer and event streams end now, not at a timeout
            if server is None:
                if starting is not None:
                    starting.cancel()  # still starting: stop that, then clean up below
            elif server.should_exit:
                server.force_exit = True  # a second signal: stop waiting for connections
            else:
                server.should_exit = True

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        # Connect before serving, so an unreachable database or Redis is one line, not a traceback.
        try:
            await hub.start(with_worker=not no_worker)
        except (PreloopError, asyncio.CancelledError):
            await hub.stop()
            raise
        try:
            if settings.demo.enabled:
                await ensure_demo(hub)
            config = uvicorn.Config(
                create_app(hub=hub), host=settings.server.host, port=settings.server.port, log_config=None,
                lifespan="on", timeout_graceful_shutdown=1,
            )
            server = HubServer(config)
            if hub.closing.is_set():
                return True
            typer.echo(f"Preloop hub running on {settings.server.base_url} "
                       f"(API docs: {settings.server.base_url}/schema)", err=True)
            gw_port = _embedded_gateway_port(settings, gateway_port)
            if gw_port is None:
                await server.serve()
                return server.started
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn has no started event
                await asyncio.sleep(0.02)
            if server.started:
                gateway_task = asyncio.create_task(_run_embedded_gateway(settings, gw_port))
                await asyncio.wait({serving, gateway_task}, return_when=asyncio.FIRST_COMPLETED)
                if not gateway_task.done():
                    gateway_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await gateway_task
                elif gateway_task.exception() is not None:
                    logging.getLogger("preloop.gateway").error(
                        "embedded gateway stopped: %s", gateway_task.exception()
                    )
            await serving
            return server.started
        finally:
            await hub.stop()

    try:
        started = asyncio.run(main())
    except PreloopError as exc:
        raise fail(exc.message) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        return  # stopped by a signal while starting; the cleanup has run
    finally:
        # Everything is closed by now; spare the interpreter's final collection of the whole heap,
        # which takes seconds on a busy machine and would hold up a supervisor's restart.
        gc.freeze()
    if not started:
        raise fail("the hub did not start; see the log line above")


def _demo_key(settings: Settings) -> str | None:
    path = settings.server.data_dir / "demo-agent.key"
    return path.read_text().strip() if path.exists() else None


def _embedded_gateway_port(settings: Settings, requested: int | None) -> int | None:
    """The embedded gateway runs when asked for, or in embedded mode when the demo key exists."""
    if requested == 0:
        return None
    if requested is None:
        if not (settings.database.embedded and _demo_key(settings)):
            return None
        requested = settings.server.port + 1
    return requested


async def _run_embedded_gateway(settings: Settings, port: int) -> None:
    from mcp_gateway.app import Gateway
    from mcp_gateway.config import GatewaySettings

    key = os.environ.get("PRELOOP_API_KEY") or _demo_key(settings)
    if not key:
        raise fail("the embedded gateway needs PRELOOP_API_KEY (or the demo agent key in the data dir)")
    # Upstream commands such as `preloop demo-upstream` must resolve to this installation.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    gateway_settings = GatewaySettings(
        api_url=f"http://127.0.0.1:{settings.server.port}" if settings.server.host in {"0.0.0.0", "::"}  # noqa: S104
        else f"http://{settings.server.host}:{settings.server.port}",
        api_key=key,
        data_dir=settings.server.data_dir / "gateway",
    )
    async with Gateway(gateway_settings) as gw:
        typer.echo(
            f"MCP gateway for agents on http://{settings.server.host}:{port}/mcp "
            f"(stdio: PRELOOP_API_KEY=$(cat {settings.server.data_dir / 'demo-agent.key'}) preloop gateway --stdio)",
            err=True,
        )
        await gw.serve_http(settings.server.host, port)


@app.command()
def worker() -> None:
    """Run the job worker alone (deadlines, sweeps, notifications) against the configured Redis."""
    from backend.logs import configure_logging
    from backend.redis_conn import connect_redis
    from workers.settings import build_worker

    settings = _settings()
    configure_logging(settings.log.level, settings.log.format)
    if settings.redis.embedded:
        raise fail("PRELOOP_REDIS_URL must point at a shared Redis for a separate worker (redis://host:6379/0)")

    async def main() -> None:
        handle = await connect_redis(settings.redis.url)
        await handle.close()
        await build_worker(handle.arq_settings()).async_run()

    try:
        asyncio.run(main())
    except PreloopError as exc:
        raise fail(exc.message) from None
    except KeyboardInterrupt:
        pass


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (also done by `preloop serve` on start)."""
    from backend import db

    applied = _run_db(_settings(), db.migrate, migrate=False)
    typer.echo(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "; up to date"),
               err=True)


@user_app.command("add")
def user_add(
    email: str = typer.Argument(..., help="The person's email; it identifies them in policies."),
    role: str = typer.Option("approver", help="admin, approver or viewer."),
    team: list[str] = typer.Option([], "--team", help="Add to this team (repeatable; created if missing)."),
    name: str = typer.Option("", help="Display name."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read a login password from stdin."),
) -> None:
    """Add a user to the organization."""
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            raise fail("the password read from stdin is shorter than 8 characters")
    settings = _settings()

    async def work() -> dict[str, Any]:
        from backend.accounts import service
        from backend.errors import NotFound

        org = await _org_id()
        user = await service.add_user(org, email, role=role, name=name, password=password)
        for team_name in team:
            try:
                await service.get_team(org, team_name)
            except NotFound:
                await service.add_team(org, team_name)
            await service.add_member(org, team_name, user["email"])
        return user

    user = _run_db(settings, work)
    typer.echo(f"added {user['email']} as {user['role']}" + (f" in {', '.join(team)}" if team else ""), err=True)


@team_app.command("add")
def team_add(name: str = typer.Argument(..., help="Team name as policies refer to it, e.g. sre_team.")) -> None:
    """Create a team."""
    settings = _settings()

    async def work() -> dict[str, Any]:
        from backend.accounts import service

        return await service.add_team(await _org_id(), name)

    _run_db(settings, work)
    typer.echo(f"added team {name}", err=True)


@key_app.command("create")
def key_create(
    name: str = typer.Option(..., "--name", help="The agent's name, as policies and approvers see it."),
    user: str = typer.Option(None, "--user", help="Owner's email (default: the first admin)."),
    scope: str = typer.Option("agent", help="agent (call tools), approver (decide by API) or admin."),
    label: list[str] = typer.Option([], "--label", help="key=value label the policy sees as agent.labels."),
) -> None:
    """Create an API key and print the token once, alone on stdout."""
    labels: dict[str, str] = {}
    for item in label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise fail(f"--label {item!r} must look like key=value")
        labels[k] = v
    settings = _settings()

    async def work() -> str:
        from backend.accounts import service
        from backend.accounts.tables import User
        from backend.errors import NotFound

        org = await _org_id()
        owner: dict[str, Any] | None
        if user:
            owner = await service.get_user(org, user)
        else:
            owner = await User.select().where((User.org == org) & (User.role == "admin")).order_by(
                User.created_at
            ).first()
            if owner is None:
                raise NotFound("no admin user exists; pass --user EMAIL or add one with `preloop user add`")
        token, _ = await service.create_key(org, owner["id"], name, scope=scope, labels=labels)
        return token

    token = _run_db(settings, work)
    sys.stdout.write(token + "\n")


def _mount_subcommands() -> None:
    """Subcommands that live beside their packages; each loads its heavy imports only when run."""
    from backend.policy_store.cli import policy_app
    from mcp_gateway.cli import demo_upstream_command, gateway

    app.add_typer(policy_app, name="policy")
    app.command("gateway")(gateway)
    app.command("demo-upstream")(demo_upstream_command)


_mount_subcommands()
