"""`preloop policy ...`: validate, test, explain and convert policy files; apply, diff, export via the API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import typer

from backend.errors import SettingsError
from backend.settings import load_client_settings
from policies import AgentInfo, CallContext, Policy, PolicyError, load_policy_file
from policies.preloop_import import convert_preloop
from policies.testing import DEFAULT_TEST_TIME, run_policy_tests

policy_app = typer.Typer(
    help="Policy as code: validate, test and explain policy files locally; apply, diff and export "
    "through the hub's API (PRELOOP_API_URL, PRELOOP_API_KEY).",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _load(path: Path) -> Policy:
    """Load a policy file or print every issue (file:line:col: message (value) hint) and exit 1."""
    try:
        return load_policy_file(path)
    except PolicyError as exc:
        for issue in exc.issues:
            typer.echo(issue.format(), err=True)
        count = len(exc.issues)
        raise _fail(f"{path}: invalid ({count} problem{'s' if count != 1 else ''})") from exc


@policy_app.command()
def validate(files: list[Path] = typer.Argument(..., help="Policy files to check.")) -> None:
    """Check policy files strictly; print each problem with file, line and column."""
    bad = 0
    for path in files:
        try:
            policy = load_policy_file(path)
        except PolicyError as exc:
            bad += 1
            for issue in exc.issues:
                typer.echo(issue.format(), err=True)
            continue
        typer.echo(
            f"{path}: ok ({len(policy.tools)} tools, {len(policy.approval_policies)} approval policies, "
            f"{len(policy.tests)} tests, sha256 {policy.version_hash[:12]})"
        )
    if bad:
        raise _fail(f"{bad} of {len(files)} file(s) invalid")


@policy_app.command("test")
def run_tests(file: Path = typer.Argument(..., help="Policy file with a tests: section.")) -> None:
    """Run the policy's own tests: section; exit 1 if any case fails."""
    policy = _load(file)
    if not policy.tests:
        raise _fail(f"{file}: no tests: section to run", code=1)
    results = run_policy_tests(policy)
    failed = 0
    for result in results:
        if result.passed:
            typer.echo(f"PASS {result.label}: {result.decision.action}")
        else:
            failed += 1
            line = f" (line {result.case.line})" if result.case.line else ""
            typer.echo(f"FAIL {result.label}{line}: " + "; ".join(result.problems))
    typer.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _parse_at(at: str | None, policy: Policy) -> datetime:
    if at is None:
        return datetime.now(UTC)  # the CLI is the caller, so it owns the clock
    try:
        moment = datetime.fromisoformat(at)
    except ValueError as exc:
        raise _fail(f"--at {at!r} is not an ISO date-time (e.g. 2025-01-04T10:00:00Z)", code=2) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(policy.timezone))


@policy_app.command()
def explain(
    file: Path = typer.Argument(..., help="Policy file."),
    tool: str = typer.Option(..., "--tool", help="Tool name as the agent calls it."),
    args: str = typer.Option("{}", "--args", help="Arguments as a JSON object."),
    server: str | None = typer.Option(
        None, "--server", help="Upstream server name (default: the one server whose entries list the tool)."
    ),
    agent: str | None = typer.Option(None, "--agent", help="Agent name."),
    at: str | None = typer.Option(None, "--at", help="ISO time of the call (naive = policy timezone)."),
    justification: str | None = typer.Option(None, "--justification", help="The agent's justification."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Show what the policy decides for one call, which rule matched, who approves and why."""
    policy = _load(file)
    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as exc:
        raise _fail(f"--args is not valid JSON: {exc}", code=2) from exc
    if not isinstance(arguments, dict):
        raise _fail("--args must be a JSON object, e.g. '{\"amount\": 250}'", code=2)
    if server is None:
        listing = policy.servers_listing(tool)
        if len(listing) > 1:
            raise _fail(
                f"tool {tool!r} is listed under several servers ({', '.join(listing)}); choose one with --server",
                code=2,
            )
        server = listing[0] if listing else None
    decision = policy.evaluate(
        CallContext(
            tool=tool,
            server=server,
            args=arguments,
            agent=AgentInfo(name=agent) if agent else None,
            justification=justification,
            now=_parse_at(at, policy),
        )
    )
    if as_json:
        typer.echo(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(f"decision: {decision.action}")
    if server is not None:
        typer.echo(f"server:   {server}")
    rule = decision.rule
    if rule is not None:
        typer.echo(f"rule:     {rule.tool} rules[{rule.index}] when {rule.when or '(always)'}")
        if rule.description:
            typer.echo(f"          {rule.description}")
    else:
        typer.echo("rule:     (none — policy default)")
    if decision.risk:
        typer.echo(f"risk:     {decision.risk}")
    if decision.message:
        typer.echo(f"message:  {decision.message}")
    ap = decision.approval_policy
    if ap is not None:
        typer.echo(
            f"approval: {ap.name}: quorum {ap.quorum} of approvers {', '.join(ap.approvers) or '-'}; "
            f"teams {', '.join(ap.teams) or '-'}"
        )
        typer.echo(f"          timeout {ap.timeout_seconds}s, then {ap.on_timeout}")
        for level in ap.escalation:
            typer.echo(
                f"          after {level.after_seconds}s escalate to {', '.join(level.users + level.teams)}"
            )
    typer.echo(f"why:      {decision.reason}")


@policy_app.command("import-preloop")
def import_preloop(
    file: Path = typer.Argument(..., help="A Preloop policy: its YAML, or JSON objects of its API."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Write the converted policy here."),
) -> None:
    """Convert a Preloop policy (YAML, or its JSON tool configurations / approval policies) into this format.

    Anything that cannot be mapped and could change a decision fails the import."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{file}: cannot read: {exc}") from exc
    try:
        converted, warnings = convert_preloop(text, source=str(file))
    except PolicyError as exc:
        for issue in exc.issues:
            typer.echo(issue.format(), err=True)
        raise _fail(f"{file}: cannot convert") from exc
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    if out is None:
        typer.echo(converted, nl=False)
    else:
        out.write_text(converted, encoding="utf-8")
        typer.echo(f"wrote {out} ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})", err=True)


# -- API-backed commands ---------------------------------------------------------------------


def _api_request(
    method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
) -> httpx.Response:
    try:
        client = load_client_settings()
    except SettingsError as exc:
        raise _fail(f"error: {exc.message}") from exc
    base = client.api_url
    headers = {"Accept": "application/json"}
    if client.api_key:
        headers["Authorization"] = f"Bearer {client.api_key}"
    try:
        response = httpx.request(
            method, f"{base}{path}", json=body, params=params, headers=headers, timeout=30.0
        )
    except httpx.HTTPError as exc:
        raise _fail(
            f"error: cannot reach the Preloop API at {base} ({type(exc).__name__}: {exc}); "
            "is `preloop serve` running and PRELOOP_API_URL right?"
        ) from exc
    if response.status_code >= 400:
        raise _fail(_api_error_text(response))
    return response


def _api_error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return f"error: HTTP {response.status_code}: {response.text[:500]}"
    lines = [
        f"error: {error.get('message') or 'request failed'} "
        f"({error.get('code', 'error')}, HTTP {error.get('status', response.status_code)})"
    ]
    detail = error.get("detail")
    issues = detail.get("issues") if isinstance(detail, dict) else None
    if isinstance(issues, list):
        for issue in issues:
            if isinstance(issue, dict):
                lines.append(_issue_line(issue))
    elif isinstance(detail, dict) and detail.get("hint"):
        lines.append(f"hint: {detail['hint']}")
    elif detail:
        lines.append(f"detail: {json.dumps(detail, default=str)[:500]}")
    return "\n".join(lines)


def _issue_line(issue: dict[str, Any]) -> str:
    text = f"{issue.get('source')}:{issue.get('line')}:{issue.get('column')}: {issue.get('message')}"
    if issue.get("value") is not None:
        text += f" (value: {issue['value']!r})"
    if issue.get("hint"):
        text += f" hint: {issue['hint']}"
    return text


def _read_source(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{file}: cannot read: {exc}") from exc


@policy_app.command()
def apply(file: Path = typer.Argument(..., help="Policy file to make active.")) -> None:
    """Validate locally, then store the file as a new immutable version and activate it."""
    _load(file)
    response = _api_request("POST", "/api/v1/policies", {"source": _read_source(file)})
    data = response.json()
    version = data.get("version") if isinstance(data, dict) else None
    sha = str(data.get("sha256", "")) if isinstance(data, dict) else ""
    typer.echo(f"applied {file}: version {version}" + (f" (sha256 {sha[:12]})" if sha else ""))
    for warning in data.get("warnings", []) if isinstance(data, dict) else []:
        typer.echo(f"warning: {warning}", err=True)


@policy_app.command()
def diff(file: Path = typer.Argument(..., help="Policy file to compare with the active version.")) -> None:
    """Show a unified diff between the active policy and FILE (canonical form)."""
    _load(file)
    response = _api_request("POST", "/api/v1/policies/diff", {"source": _read_source(file)})
    data = response.json()
    active = data.get("active_version")
    text = data.get("diff") or ""
    if not text:
        typer.echo(f"no changes against active version {active}")
        return
    typer.echo(f"# against active version {active if active is not None else '(none)'}")
    typer.echo(text, nl=not text.endswith("\n"))


@policy_app.command()
def export(fmt: str = typer.Option("yaml", "--format", help="yaml or json.")) -> None:
    """Print the active policy."""
    if fmt not in ("yaml", "json"):
        raise _fail("--format must be yaml or json", code=2)
    response = _api_request("GET", "/api/v1/policies/export", params={"format": fmt})
    typer.echo(response.text, nl=not response.text.endswith("\n"))


__all__ = ["DEFAULT_TEST_TIME", "policy_app"]
