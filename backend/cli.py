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
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from backend.errors import PreloopError
from backend.settings import Settings, load_gateway_env, load_settings, load_shell_settings

T = TypeVar("T")

app = typer.Typer(
    name="preloop",
    help="Preloop: approval hub and MCP firewall for AI agents' tool calls.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: no boxes, no <bool>/<str> type tags
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
user_app = typer.Typer(help="People who approve, administer or watch.", no_args_is_help=True)
team_app = typer.Typer(help="Teams of approvers.", no_args_is_help=True)
key_app = typer.Typer(help="API keys for agents and integrations.", no_args_is_help=True)
org_app = typer.Typer(help="Organizations (tenants) on this hub.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(org_app, name="org")
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


def run_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine on PRELOOP_EVENT_LOOP's event loop: uvloop's (the default; the
    standard library's when uvloop is not installed) or asyncio's."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.server.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # an install without it (e.g. a platform uvloop has no wheel for)
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


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
        return run_loop(settings, main())
    except PreloopError as exc:
        raise fail(exc.message) from None


async def _org_id() -> Any:
    from backend.accounts import service
    from backend.accounts.tables import Organization

    if await Organization.count() == 0:
        return (await service.create_org("Default", "default"))["id"]
    return (await service.default_org())["id"]


def _cli_actor() -> Any:
    from backend.audit.service import Actor

    return Actor.system(f"cli ({load_shell_settings().user or 'unknown user'})")


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise fail("the password read from stdin is shorter than 8 characters")
    return password


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
    from workers.embedded import EmbeddedWorker

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
        worker: EmbeddedWorker | None = None
        try:
            await hub.start()
            if not no_worker:
                worker = await EmbeddedWorker(hub).start()
        except (PreloopError, asyncio.CancelledError):
            if worker is not None:
                await worker.stop()
            await hub.stop()
            raise
        try:
            created = await ensure_demo(hub) if settings.demo.enabled else None
            config = uvicorn.Config(
                create_app(hub=hub), host=settings.server.host, port=settings.server.port, log_config=None,
                lifespan="on", timeout_graceful_shutdown=1,
            )
            server = HubServer(config)
            if hub.closing.is_set():
                return True
            gw_port = _embedded_gateway_port(settings, gateway_port)
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn has no started event
                await asyncio.sleep(0.02)
            if not server.started:
                await serving
                if created is not None:  # the demo logins are shown once: never lose them
                    _print_ready(settings, None, created)
                return False
            settle_heap()
            if gw_port is None:
                _print_ready(settings, None, created)
                await serving
                return True
            gateway_ready = asyncio.Event()
            gateway_task = asyncio.create_task(_run_embedded_gateway(settings, gw_port, gateway_ready))
            ready_wait = asyncio.create_task(gateway_ready.wait())
            await asyncio.wait({ready_wait, gateway_task, serving}, return_when=asyncio.FIRST_COMPLETED)
            ready_wait.cancel()
            if gateway_task.done() and gateway_task.exception() is not None:
                logging.getLogger("preloop.gateway").error("embedded gateway stopped: %s", gateway_task.exception())
            # Without a gateway (it failed, logged above) the box still carries the URLs and logins.
            _print_ready(settings, gw_port if gateway_ready.is_set() else None, created)
            await asyncio.wait({serving, gateway_task}, return_when=asyncio.FIRST_COMPLETED)
            if not gateway_task.done():
                gateway_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gateway_task
            elif gateway_ready.is_set() and gateway_task.exception() is not None:
                logging.getLogger("preloop.gateway").error("embedded gateway stopped: %s", gateway_task.exception())
            await serving
            return True
        finally:
            if worker is not None:
                await worker.stop()
            await hub.stop()

    try:
        started = run_loop(settings, main())
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


YOUNG_COLLECTION_EVERY = 10_000
"""Net allocations of container objects between two young-generation collections (Python's default: 700)."""


def settle_heap() -> None:
    """Once a long-running process has started: what it built (modules, app, pools) moves out of the
    garbage collector's reach (`gc.freeze`), so no collection walks it again, and young collections run
    every `YOUNG_COLLECTION_EVERY` net allocations. A young collection costs about what survives it (the
    objects of the requests in flight), not what was allocated since the last, so running them 14x less
    often saves most of their time; under `bench/throughput.py` the API's CPU per cycle went 9.6 -> 9.0 ms
    (lower in 5 of 6 alternating rounds)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 20)


def _print_ready(settings: Settings, gw_port: int | None, created: dict[str, Any] | None) -> None:
    """The last thing `preloop serve` prints: where everything is and, on first start, the logins."""
    from backend.demo import box, login_lines

    base = settings.server.base_url
    lines = [f"approver app: {base}/app/", f"API docs:     {base}/schema"]
    if gw_port is not None:
        host = settings.server.host
        lines.append(f"MCP gateway:  http://{host}:{gw_port}/mcp")
    lines += login_lines(created, settings.server.data_dir / "demo-agent.key")
    if gw_port is not None:
        key_file = settings.server.data_dir / "demo-agent.key"
        preloop = Path(sys.executable).parent / "preloop"
        lines.append(f"stdio agent:  PRELOOP_API_KEY=$(cat {key_file}) {preloop} gateway --stdio")
    lines.append("Stop with Ctrl-C.")
    typer.echo(box(f"Preloop hub running on {base}", lines))


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


async def _run_embedded_gateway(settings: Settings, port: int, ready: asyncio.Event) -> None:
    from mcp_gateway.app import Gateway
    from mcp_gateway.config import GatewaySettings

    key = load_gateway_env().api_key or _demo_key(settings)
    if not key:
        raise fail("the embedded gateway needs PRELOOP_API_KEY (or the demo agent key in the data dir)")
    gateway_settings = GatewaySettings(
        api_url=f"http://127.0.0.1:{settings.server.port}" if settings.server.host in {"0.0.0.0", "::"}  # noqa: S104
        else f"http://{settings.server.host}:{settings.server.port}",
        api_key=key,
        data_dir=settings.server.data_dir / "gateway",
    )
    async with Gateway(gateway_settings) as gw:
        ready.set()
        await gw.serve_http(settings.server.host, port)


@app.command()
def worker(
    metrics: str = typer.Option(
        None, "--metrics", metavar="HOST:PORT",
        help="Serve this worker's Prometheus metrics (deadline lag, decisions, deliveries) at http://HOST:PORT/metrics.",
    ),
) -> None:
    """Run the job worker alone (deadlines, sweeps, notifications) against the configured Redis."""
    from backend.logs import configure_logging
    from backend.redis_conn import connect_redis
    from workers.settings import build_worker, close_worker

    settings = _settings()
    configure_logging(settings.log.level, settings.log.format)
    if settings.redis.embedded:
        raise fail("PRELOOP_REDIS_URL must point at a shared Redis for a separate worker (redis://host:6379/0)")
    if metrics:
        _serve_worker_metrics(metrics)

    async def main() -> None:
        handle = await connect_redis(settings.redis.url)
        await handle.close()
        worker = build_worker(handle.arq_settings())
        settle_heap()
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            # arq answers SIGTERM and SIGINT by cancelling its own main task: a requested stop, not an
            # error (systemd, Fly and Ctrl-C all stop the worker this way).
            pass
        finally:
            await close_worker(worker)  # running jobs' connections and the hub close; the next start re-queues
        logging.getLogger("preloop.worker").info("worker stopped")

    try:
        run_loop(settings, main())
    except PreloopError as exc:
        raise fail(exc.message) from None
    except KeyboardInterrupt:
        pass


def _serve_worker_metrics(address: str) -> None:
    from prometheus_client import start_http_server

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise fail(f"--metrics {address!r} must look like HOST:PORT, e.g. 127.0.0.1:9091")
    host = host.strip("[]") or "127.0.0.1"
    _check_port_free(host, int(port))
    start_http_server(int(port), addr=host)  # a daemon thread; jobs record into the same registry


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
    password = _read_password() if password_stdin else None
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


@user_app.command("passwd")
def user_passwd(
    email: str = typer.Argument(..., help="Whose password to set."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the new password from stdin."),
) -> None:
    """Set a user's password (their sessions end); use `user invite` to let them choose one."""
    if not password_stdin:
        raise fail("pass --password-stdin and the password on stdin (so it stays out of shell history)", code=2)
    password = _read_password()
    settings = _settings()

    async def work() -> None:
        from backend.accounts import lifecycle

        await lifecycle.set_password(await _org_id(), email, password, actor=_cli_actor())

    _run_db(settings, work)
    typer.echo(f"password set for {email.strip().lower()}", err=True)


@user_app.command("invite")
def user_invite(email: str = typer.Argument(..., help="Who gets the link.")) -> None:
    """Print a one-time link (valid 24 h, single use) for the user to set a password."""
    settings = _settings()

    async def work() -> str:
        from backend.accounts import lifecycle

        return await lifecycle.create_invite(await _org_id(), email, actor=_cli_actor())

    token = _run_db(settings, work)
    sys.stdout.write(f"{settings.server.base_url}/app/#invite={token}\n")
    typer.echo("send this link to them; it works once, for 24 hours", err=True)


def _set_active(email: str, active: bool) -> None:
    settings = _settings()

    async def work() -> dict[str, Any]:
        from backend.accounts import lifecycle

        return await lifecycle.set_active(await _org_id(), email, active, actor=_cli_actor())

    state = _run_db(settings, work)
    verb = "reactivated" if active else "deactivated"
    typer.echo(f"{state['email']} {verb}" if state["changed"] else f"{state['email']} was already {verb}", err=True)


@user_app.command("deactivate")
def user_deactivate(email: str = typer.Argument(..., help="Who to stop.")) -> None:
    """Stop a user at once: no sign-in, sessions ended, API keys refused."""
    _set_active(email, False)


@user_app.command("reactivate")
def user_reactivate(email: str = typer.Argument(..., help="Who to let back in.")) -> None:
    """Let a deactivated user sign in and use their keys again."""
    _set_active(email, True)


@team_app.command("add")
def team_add(name: str = typer.Argument(..., help="Team name as policies refer to it, e.g. sre_team.")) -> None:
    """Create a team."""
    settings = _settings()

    async def work() -> dict[str, Any]:
        from backend.accounts import service

        return await service.add_team(await _org_id(), name)

    _run_db(settings, work)
    typer.echo(f"added team {name}", err=True)


def _team_change(describe: str, change: Callable[[Any], Awaitable[Any]]) -> None:
    settings = _settings()

    async def work() -> None:
        await change(await _org_id())

    _run_db(settings, work)
    typer.echo(describe, err=True)


@team_app.command("add-member")
def team_add_member(team: str = typer.Argument(...), email: str = typer.Argument(...)) -> None:
    """Add a user to a team."""
    from backend.accounts import service

    _team_change(f"added {email} to {team}",
                 lambda org: service.add_member(org, team, email, actor=_cli_actor()))


@team_app.command("remove-member")
def team_remove_member(team: str = typer.Argument(...), email: str = typer.Argument(...)) -> None:
    """Remove a user from a team."""
    from backend.accounts import lifecycle

    _team_change(f"removed {email} from {team}",
                 lambda org: lifecycle.remove_member(org, team, email, actor=_cli_actor()))


@team_app.command("rename")
def team_rename(old: str = typer.Argument(...), new: str = typer.Argument(...)) -> None:
    """Rename a team (policies that name the old team need the new name too)."""
    from backend.accounts import lifecycle

    _team_change(f"renamed team {old} to {new}", lambda org: lifecycle.rename_team(org, old, new, actor=_cli_actor()))


@team_app.command("delete")
def team_delete(name: str = typer.Argument(...)) -> None:
    """Delete a team and its memberships (the people stay)."""
    from backend.accounts import lifecycle

    _team_change(f"deleted team {name}", lambda org: lifecycle.delete_team(org, name, actor=_cli_actor()))


@key_app.command("revoke")
def key_revoke(key: str = typer.Argument(..., help="The key's id or prefix (see GET /api/v1/keys).")) -> None:
    """Revoke an API key at once."""
    settings = _settings()

    async def work() -> dict[str, Any]:
        from backend.accounts import lifecycle

        return await lifecycle.revoke_key(await _org_id(), key, actor=_cli_actor())

    revoked = _run_db(settings, work)
    typer.echo(f"revoked key {revoked['name']} ({revoked['prefix']})", err=True)


@org_app.command("add")
def org_add(
    name: str = typer.Argument(..., help="Display name."),
    slug: str = typer.Option(None, "--slug", help="Short id used at sign-in (default: from the name)."),
    admin: str = typer.Option(None, "--admin", help="Create this admin in the new org and print an invite link."),
) -> None:
    """Add an organization (another tenant on the same hub)."""
    settings = _settings()

    async def work() -> tuple[dict[str, Any], str | None]:
        from backend.accounts import lifecycle, service

        await _org_id()  # the default org stays the oldest one
        org = await service.create_org(name, slug, actor=_cli_actor())
        if not admin:
            return org, None
        await service.add_user(org["id"], admin, role="admin", actor=_cli_actor())
        return org, await lifecycle.create_invite(org["id"], admin, actor=_cli_actor())

    org, token = _run_db(settings, work)
    typer.echo(f"added organization {org['name']} (slug {org['slug']})", err=True)
    if token:
        sys.stdout.write(f"{settings.server.base_url}/app/#invite={token}\n")


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
    from backend.approvals.cli import approvals_app
    from backend.audit.cli import audit_app
    from backend.policy_store.cli import policy_app
    from mcp_gateway.cli import demo_upstream_command, gateway

    app.add_typer(policy_app, name="policy")
    app.add_typer(audit_app, name="audit")
    app.add_typer(approvals_app, name="approvals")
    app.command("gateway")(gateway)
    app.command("demo-upstream")(demo_upstream_command)


_mount_subcommands()


def main() -> None:
    """The console script: usage errors are one line naming the command's --help, like every other error."""
    from typer._click import exceptions as usage  # typer 0.2x vendors click; its errors live here

    try:
        code = app(standalone_mode=False)
    except usage.NoArgsIsHelpError as exc:
        typer.echo(exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except usage.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = "; ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
        typer.echo(f"error: {message}{where}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
