import ast
import itertools
import re
from pathlib import Path

import pytest

from backend.errors import SettingsError
from backend.settings import DEFAULT_PORT, GatewayEnvSettings, load_client_settings, load_gateway_env, load_settings


def test_defaults_are_embedded_mode() -> None:
    settings = load_settings({})
    assert settings.database.embedded and settings.redis.embedded
    assert settings.server.port == DEFAULT_PORT
    assert settings.database_url == f"sqlite:///{(Path('.preloop') / 'preloop.db').resolve()}"


def test_a_local_postgresql_through_its_socket_directory() -> None:
    url = "postgres://preloop@/preloop?host=/var/run/postgresql"
    assert load_settings({"PRELOOP_DATABASE_URL": url}).database_url == url


def test_scaled_mode_by_environment_only() -> None:
    settings = load_settings(
        {"PRELOOP_DATABASE_URL": "postgres://u@db:5432/preloop", "PRELOOP_REDIS_URL": "redis://cache:6379/0"}
    )
    assert not settings.database.embedded and not settings.redis.embedded
    assert settings.database_url == "postgres://u@db:5432/preloop"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("PRELOOP_DATABASE_URL", "mysql://x/y", "postgres://"),
        ("PRELOOP_DATABASE_URL", "postgres://host-only", "needs a host and a database"),
        ("PRELOOP_DATABASE_URL", "postgres://u@/db", "socket directory"),
        ("PRELOOP_DATABASE_URL", "postgres://u@/db?host=relative/dir", "needs a host and a database"),
        ("PRELOOP_DATABASE_URL", "postgres://u@/?host=/var/run/postgresql", "needs a host and a database"),
        ("PRELOOP_DATABASE_URL", "postgres://h:notaport/db", "port is not a number"),
        ("PRELOOP_DATABASE_URL", "sqlite://relative.db", "sqlite:///"),
        ("PRELOOP_REDIS_URL", "http://cache", "redis://"),
        ("PRELOOP_REDIS_URL", "redis://", "needs a host"),
        ("PRELOOP_PORT", "eighty", "whole number"),
        ("PRELOOP_PORT", "70000", "between 1 and 65535"),
        ("PRELOOP_LOG_LEVEL", "loud", "debug, info, warning, error"),
        ("PRELOOP_DEMO", "maybe", "true or false"),
        ("PRELOOP_PUBLIC_URL", "ftp://x", "http://"),
    ],
)
def test_bad_values_name_the_variable_the_value_and_the_fix(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    message = caught.value.message
    assert message.startswith(f"{variable}={value!r}")
    assert fragment in message
    assert "\n" not in message


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings({"PRELOOP_DATA_DIR": str(tmp_path)})
    first = settings.secret_key()
    assert len(first) > 40
    assert settings.secret_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_client_settings_read_only_the_api_variables() -> None:
    assert load_client_settings({}).api_url == "http://127.0.0.1:8686"
    client = load_client_settings({"PRELOOP_API_URL": " https://hub.example.com/ ", "PRELOOP_API_KEY": "pl_k",
                                   "PRELOOP_PORT": "not-a-port"})  # a hub setting never gets in the way
    assert (client.api_url, client.api_key) == ("https://hub.example.com", "pl_k")
    with pytest.raises(SettingsError, match=r"PRELOOP_API_URL='hub:8686': use the hub's address"):
        load_client_settings({"PRELOOP_API_URL": "hub:8686"})


def test_gateway_variables_are_read_in_settings() -> None:
    assert load_gateway_env({}) == GatewayEnvSettings()
    gateway = load_gateway_env({"PRELOOP_GATEWAY_FAST_PATH": "0", "PRELOOP_GATEWAY_AGENT_KEY_TTL": "2.5",
                                "PRELOOP_GATEWAY_DATA_DIR": "/srv/gw", "PRELOOP_API_KEY": "pl_a"})
    assert (gateway.fast_path, gateway.agent_key_ttl, gateway.data_dir, gateway.api_key) == (
        False, 2.5, Path("/srv/gw"), "pl_a")
    with pytest.raises(SettingsError, match=r"PRELOOP_GATEWAY_AGENT_KEY_TTL='soon': must be a number"):
        load_gateway_env({"PRELOOP_GATEWAY_AGENT_KEY_TTL": "soon"})


ROOT = Path(__file__).parents[2]
SETTINGS = ROOT / "backend" / "settings.py"
# The only environment reads outside backend/settings.py, and why: Piccolo finds its config module through
# PICCOLO_CONF (set, not a setting of ours); a policy's `servers:` entries name their own `${NAME}` variables.
OUTSIDE_SETTINGS = {("backend/db.py", "<module>"), ("mcp_gateway/upstreams.py", "expand_env")}


def _source_files() -> list[Path]:
    return [
        path
        for folder in ("backend", "mcp_gateway", "workers", "policies")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "migrations" not in path.parts
    ]


def _environment_reads(path: Path) -> set[tuple[str, str]]:
    """(file, enclosing function) of every os.environ / os.getenv use and every typer `envvar=`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[tuple[str, str]] = set()
    relative = path.relative_to(ROOT).as_posix()

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope
            if (isinstance(child, ast.Attribute) and child.attr in {"environ", "getenv", "environb"}) or (
                isinstance(child, ast.ImportFrom) and child.module == "os"
                and any(alias.name in {"environ", "getenv"} for alias in child.names)
            ) or (isinstance(child, ast.keyword) and child.arg == "envvar"):
                found.add((relative, scope))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def _variables_read_by_settings() -> tuple[set[str], set[str]]:
    """Names passed to the environment readers in backend/settings.py, and names its field docstrings give."""
    tree = ast.parse(SETTINGS.read_text(encoding="utf-8"))
    read: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in {"_env", "_int", "_bool", "_choice"}:
            argument = node.args[1]
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "get" and ast.unparse(node.func.value) == "env":
            argument = node.args[0]
        else:
            continue
        if isinstance(argument, ast.Name) and argument.id == "name":
            continue  # inside the readers themselves
        assert isinstance(argument, ast.Constant), f"settings.py line {node.lineno}: name the variable literally"
        read.add(str(argument.value))
    documented: set[str] = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for field_node, doc in itertools.pairwise(cls.body):
            if isinstance(field_node, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(
                doc.value, ast.Constant
            ):
                name = str(doc.value.value).split(":", 1)[0]
                if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                    documented.add(name)
    return read, documented


def test_only_settings_reads_the_environment() -> None:
    reads = set().union(*(_environment_reads(path) for path in _source_files() if path != SETTINGS))
    assert reads == OUTSIDE_SETTINGS, "read environment variables through backend/settings.py"


def test_every_variable_read_is_documented_in_settings_env_example_and_configuration() -> None:
    read, documented = _variables_read_by_settings()
    assert "PRELOOP_GATEWAY_FAST_PATH" in read and "PRELOOP_DATABASE_URL" in read  # the scan sees both kinds
    assert read == documented, "each variable read needs a field whose docstring starts with its name"
    env_example = (ROOT / ".env.example").read_text(encoding="utf-8")
    configuration = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert {name for name in read if not re.search(rf"\b{name}\b", env_example)} == set(), ".env.example"
    assert {name for name in read if f"`{name}`" not in configuration} == set(), "docs/configuration.md"
    # Nothing stale: every PRELOOP_ name in the code, .env.example and the configuration page is one that is read.
    mentioned = {m for path in _source_files() for m in re.findall(r"PRELOOP_[A-Z0-9_]+", path.read_text())}
    listed = set(re.findall(r"PRELOOP_[A-Z0-9_]+", env_example + configuration))
    assert (mentioned | listed) - read == set()


def test_event_loop_is_uvloop_unless_asked_for_asyncio() -> None:
    """`preloop serve`, `preloop worker` and the CLI's database commands run on uvloop by default;
    PRELOOP_EVENT_LOOP=asyncio gives the standard library's loop; anything else is refused by name."""
    import asyncio

    import uvloop

    from backend.cli import run_loop

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert load_settings({}).server.event_loop == "uvloop"
    assert run_loop(load_settings({}), loop_type()) is uvloop.Loop
    chosen = load_settings({"PRELOOP_EVENT_LOOP": "asyncio"})
    assert not issubclass(run_loop(chosen, loop_type()), uvloop.Loop)
    with pytest.raises(SettingsError, match=r"PRELOOP_EVENT_LOOP.*uvloop, asyncio"):
        load_settings({"PRELOOP_EVENT_LOOP": "trio"})


def test_api_fast_path_is_on_unless_turned_off() -> None:
    """PRELOOP_API_FAST_PATH: 1 (the default) or 0; anything else is refused by name."""
    assert load_settings({}).server.fast_path is True
    assert load_settings({"PRELOOP_API_FAST_PATH": "0"}).server.fast_path is False
    with pytest.raises(SettingsError, match=r"PRELOOP_API_FAST_PATH.*1, 0"):
        load_settings({"PRELOOP_API_FAST_PATH": "off"})
