"""Faithful proxying: real servers from PyPI and npm look and answer the same through the gateway."""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_gateway.app import Gateway
from tests.interop.conftest import BIN, free_port, running_gateway, serving_http, spawned, wait_for_port

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True, params=["fast-path", "plain-asgi"])
def http_front(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every fidelity test runs on the hand-written front + fast lane and on the plain ASGI app."""
    if request.param == "plain-asgi":
        monkeypatch.setenv("PRELOOP_GATEWAY_FAST_PATH", "0")
    return str(request.param)

ALLOW_ALL = """
version: "1"
servers:
{servers}
tools: []
defaults: {{unknown_tools: allow, no_match: allow, justification: none}}
"""


def policy_for(*servers: str) -> str:
    return ALLOW_ALL.format(servers="\n".join(f"  - {s}" for s in servers))


def tool_dump(tool: Any) -> dict[str, Any]:
    return tool.model_dump(by_alias=True, exclude_none=True, mode="json")


_CLOCK = re.compile(r"\d{1,2}:\d{2}:\d{2}(\s?[AP]M)?")


def _without_clock(value: Any, key: str = "") -> Any:
    """server-everything stamps generated resources with the wall clock; blank it on both sides."""
    if isinstance(value, dict):
        return {k: _without_clock(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_clock(v) for v in value]
    if isinstance(value, str) and key == "blob":
        return base64.b64encode(_CLOCK.sub("<time>", base64.b64decode(value).decode()).encode()).decode()
    if isinstance(value, str) and key == "text":
        return _CLOCK.sub("<time>", value)
    return value


def result_dump(result: Any) -> dict[str, Any]:
    data = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    data.pop("_meta", None)
    data.pop("resultType", None)
    return dict(_without_clock(data))


@asynccontextmanager
async def agent_clients(gw: Gateway) -> AsyncIterator[list[tuple[str, Client]]]:
    """The same gateway seen by three agents: in-process, streamable HTTP modern, streamable HTTP legacy."""
    async with (
        serving_http(gw) as url,
        Client(gw.server.server) as inproc,
        Client(url) as modern,
        Client(url, mode="legacy") as legacy,
    ):
        yield [("in-process", inproc), ("http-2026", modern), ("http-legacy", legacy)]


# Fields the 2026-07-28 wire no longer defines (tasks moved out of core); the SDK drops them for modern agents.
NOT_IN_2026 = ("execution",)


async def assert_same_tools(direct: Client, through: Client) -> None:
    mine = {t.name: tool_dump(t) for t in (await direct.list_tools()).tools}
    if through.protocol_version in MODERN_PROTOCOL_VERSIONS:
        mine = {n: {k: v for k, v in d.items() if k not in NOT_IN_2026} for n, d in mine.items()}
    theirs = {t.name: tool_dump(t) for t in (await through.list_tools()).tools}
    assert theirs.pop("preloop_approval_status")
    for name, definition in mine.items():
        assert theirs.get(name) == definition, name


async def test_mcp_server_time_is_proxied_faithfully(tmp_path: Path) -> None:
    command = f"[{BIN / 'mcp-server-time'}, --local-timezone, UTC]"
    params = StdioServerParameters(command=str(BIN / "mcp-server-time"), args=["--local-timezone", "UTC"])
    args = {"source_timezone": "Europe/Paris", "time": "09:30", "target_timezone": "Asia/Tokyo"}
    async with (
        running_gateway(tmp_path, policy_for(f"{{name: time, command: {command}}}")) as gw,
        Client(params, mode="legacy") as direct,
        agent_clients(gw) as agents,
    ):
        expected = result_dump(await direct.call_tool("convert_time", args))
        bad = result_dump(await direct.call_tool("convert_time", {**args, "time": "25:99"}))
        assert bad["isError"] is True
        for label, agent in agents:
            await assert_same_tools(direct, agent)
            assert result_dump(await agent.call_tool("convert_time", args)) == expected, label
            assert result_dump(await agent.call_tool("convert_time", {**args, "time": "25:99"})) == bad, label


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        "GIT_AUTHOR_NAME": "T",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "T",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    (repo / "README.md").write_text("hello\n")
    subprocess.run(["git", "-C", str(repo), "add", "README.md"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "first commit"], check=True, env=env)
    (repo / "README.md").write_text("hello\nworld\n")
    return repo


async def test_mcp_server_git_is_proxied_faithfully(tmp_path: Path, git_repo: Path) -> None:
    exe = BIN / "mcp-server-git"
    params = StdioServerParameters(command=str(exe), args=["--repository", str(git_repo)])
    policy = policy_for(f"{{name: git, command: [{exe}, --repository, {git_repo}], prefix: git}}")
    async with (
        running_gateway(tmp_path, policy) as gw,
        Client(params, mode="legacy") as direct,
        agent_clients(gw) as agents,
    ):
        status = result_dump(await direct.call_tool("git_status", {"repo_path": str(git_repo)}))
        diff = result_dump(await direct.call_tool("git_diff_unstaged", {"repo_path": str(git_repo)}))
        direct_tools = {t.name: tool_dump(t) for t in (await direct.list_tools()).tools}
        for label, agent in agents:
            listed = {t.name: tool_dump(t) for t in (await agent.list_tools()).tools}
            # The prefix option renames tools and changes nothing else.
            for name, definition in direct_tools.items():
                assert listed[f"git_{name}"] == {**definition, "name": f"git_{name}"}, (label, name)
            got = await agent.call_tool("git_git_status", {"repo_path": str(git_repo)})
            assert result_dump(got) == status, label
            assert result_dump(await agent.call_tool("git_git_diff_unstaged", {"repo_path": str(git_repo)})) == diff


EVERYTHING_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("echo", {"message": "héllo through the gateway"}),
    ("get-tiny-image", {}),
    ("get-resource-reference", {"resourceType": "Text", "resourceId": 3}),
    ("get-resource-reference", {"resourceType": "Blob", "resourceId": 2}),
    ("get-structured-content", {"location": "Chicago"}),
    ("get-annotated-message", {"messageType": "error", "includeImage": True}),
    ("get-sum", {"a": 2, "b": 40}),
    ("get-sum", {"a": "not a number"}),
]


async def check_everything(gw: Gateway, direct: Client) -> None:
    kinds: set[str] = set()
    async with agent_clients(gw) as agents:
        for name, args in EVERYTHING_CALLS:
            expected = result_dump(await direct.call_tool(name, args))
            kinds |= {c["type"] for c in expected.get("content", [])}
            for label, agent in agents:
                assert result_dump(await agent.call_tool(name, args)) == expected, (label, name)
        for _, agent in agents:
            await assert_same_tools(direct, agent)
    assert {"text", "image", "resource"} <= kinds  # every content type the server offers went through


async def test_server_everything_over_stdio_upstream(tmp_path: Path, everything_js: Path) -> None:
    params = StdioServerParameters(command="node", args=[str(everything_js), "stdio"])
    policy = policy_for(f"{{name: everything, command: [node, {everything_js}, stdio]}}")
    async with running_gateway(tmp_path, policy) as gw, Client(params, mode="legacy") as direct:
        await check_everything(gw, direct)


async def test_server_everything_over_http_upstream(tmp_path: Path, everything_js: Path) -> None:
    port = free_port()
    with spawned(["node", str(everything_js), "streamableHttp"], env={"PORT": str(port)}) as proc:
        await wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        async with (
            running_gateway(tmp_path, policy_for(f"{{name: everything, url: '{url}'}}")) as gw,
            Client(url, mode="legacy") as direct,
        ):
            await check_everything(gw, direct)


async def test_modern_http_upstream_uses_the_fast_lane(tmp_path: Path) -> None:
    port = free_port()
    cmd = [str(BIN / "python"), "-m", "mcp_gateway.demo_upstream", "--http", f"127.0.0.1:{port}"]
    with spawned(cmd) as proc:
        await wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        async with running_gateway(tmp_path, policy_for(f"{{name: demo, url: '{url}'}}")) as gw, Client(url) as direct:
            assert gw.pool.upstreams["demo"].fast_lane is not None
            args = {"service": "api", "replicas": 3, "environment": "staging"}
            expected = result_dump(await direct.call_tool("scale_service", args))
            assert expected["structuredContent"]["replicas"] == 3
            async with agent_clients(gw) as agents:
                for label, agent in agents:
                    await assert_same_tools(direct, agent)
                    assert result_dump(await agent.call_tool("scale_service", args)) == expected, label
                    bad = await agent.call_tool("scale_service", {"service": "api", "replicas": -1})
                    assert bad.is_error, label


def dump(value: Any) -> Any:
    return _without_clock(value.model_dump(by_alias=True, exclude_none=True, mode="json"))


def without_envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("_meta", "resultType", "nextCursor", "ttlMs", "cacheScope")}


async def check_everything_beyond_tools(gw: Gateway, direct: Client) -> None:
    """Resources, templates, prompts, completion and logging look and answer the same through the gateway."""
    resources = await direct.list_resources()
    templates = await direct.list_resource_templates()
    prompts = await direct.list_prompts()
    links = await direct.call_tool("get-resource-links", {"count": 3})
    linked = [c.uri for c in links.content if getattr(c, "type", "") == "resource_link"]
    assert linked
    uris = [str(r.uri) for r in resources.resources][:3] + [str(u) for u in linked]
    expected_reads = {uri: without_envelope(dump(await direct.read_resource(uri))) for uri in uris}
    prompt_args = {"city": "Paris", "state": "TX"}
    expected_prompt = without_envelope(dump(await direct.get_prompt("args-prompt", prompt_args)))
    completion_ref = {"type": "ref/prompt", "name": "completable-prompt"}
    argument = {"name": "department", "value": "E"}
    expected_completion = without_envelope(dump(await direct.complete(completion_ref, argument)))
    async with agent_clients(gw) as agents:
        for label, agent in agents:
            assert without_envelope(dump(await agent.list_resources())) == without_envelope(dump(resources)), label
            assert without_envelope(dump(await agent.list_resource_templates())) == without_envelope(
                dump(templates)
            ), label
            assert without_envelope(dump(await agent.list_prompts())) == without_envelope(dump(prompts)), label
            for uri, expected in expected_reads.items():
                assert without_envelope(dump(await agent.read_resource(uri))) == expected, (label, uri)
            assert without_envelope(dump(await agent.get_prompt("args-prompt", prompt_args))) == expected_prompt
            got = await agent.complete(completion_ref, argument)
            assert without_envelope(dump(got)) == expected_completion, label


async def test_server_everything_resources_prompts_and_completion(tmp_path: Path, everything_js: Path) -> None:
    params = StdioServerParameters(command="node", args=[str(everything_js), "stdio"])
    policy = policy_for(f"{{name: everything, command: [node, {everything_js}, stdio]}}")
    async with running_gateway(tmp_path, policy) as gw, Client(params, mode="legacy") as direct:
        await check_everything_beyond_tools(gw, direct)


async def test_server_everything_resources_prompts_and_completion_over_http(
    tmp_path: Path, everything_js: Path
) -> None:
    port = free_port()
    with spawned(["node", str(everything_js), "streamableHttp"], env={"PORT": str(port)}) as proc:
        await wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        async with (
            running_gateway(tmp_path, policy_for(f"{{name: everything, url: '{url}'}}")) as gw,
            Client(url, mode="legacy") as direct,
        ):
            await check_everything_beyond_tools(gw, direct)


async def test_upstream_log_messages_reach_the_agent(tmp_path: Path, everything_js: Path) -> None:
    policy = policy_for(f"{{name: everything, command: [node, {everything_js}, stdio]}}")
    got = anyio.Event()
    seen: list[Any] = []

    async def on_log(params: Any) -> None:
        seen.append(params)
        got.set()

    async with (
        running_gateway(tmp_path, policy) as gw,
        serving_http(gw) as url,
        Client(url, mode="legacy", logging_callback=on_log) as agent,
    ):
        await agent.set_logging_level("debug")
        await agent.call_tool("toggle-simulated-logging", {})
        with anyio.fail_after(30):
            await got.wait()
        await agent.call_tool("toggle-simulated-logging", {})
    assert seen and seen[0].level
