"""`preloop approvals ...`: list, show, approve, decline, watch and export decisions through the REST API."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import typer

from backend.approvals.schemas import HistoryFilter
from backend.client import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ApiError,
    HubClient,
)
from backend.errors import SettingsError
from backend.settings import ClientSettings, load_client_settings

T = TypeVar("T")

approvals_app = typer.Typer(
    help="Decide and follow approval requests through the hub's API (PRELOOP_API_URL, PRELOOP_API_KEY). "
    "Exit codes: 0 ok, 1 refused by the hub, 2 usage, 3 auth, 4 not found, 5 conflict "
    "(e.g. already decided), 6 hub unreachable.",
    no_args_is_help=True,
)

# The hub sends a keepalive comment every 15 s; a silent minute means the connection is gone.
WATCH_READ_TIMEOUT = 60.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0
RETRY_STATUSES = frozenset({502, 503, 504})


def _exit(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> ClientSettings:
    try:
        return load_client_settings()
    except SettingsError as exc:
        _exit(exc.message, EXIT_USAGE)


def _call(work: Callable[[HubClient], T]) -> T:
    """Run `work` with a client; every expected failure becomes one line and its exit code."""
    try:
        with HubClient(_settings()) as client:
            return work(client)
    except ApiError as exc:
        _exit(exc.message, exc.exit_code)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _short_time(value: str | None) -> str:
    return (value or "")[:19].replace("T", " ")


def _votes(item: dict[str, Any]) -> str:
    quorum = item.get("quorum") or {}
    return f"{quorum.get('approvals', 0)}/{quorum.get('required', 1)}"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@approvals_app.command("list")
def list_approvals(
    status: str = typer.Option(None, "--status", help="pending, approved, declined, expired, cancelled, executing, "
                               "executed or failed; several separated by commas."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the hub's JSON instead of a table."),
) -> None:
    """List approval requests, newest first."""
    params = {**HistoryFilter(status=status).as_query(), "limit": limit}
    items: list[dict[str, Any]] = _call(lambda c: c.request("GET", "/api/v1/approvals", params=params))
    if as_json:
        _print_json(items)
        return
    if not items:
        typer.echo("no approval requests" + (f" with status {status}" if status else ""), err=True)
        return
    _table(
        [[i["id"], i["status"], i["tool"], i["agent"]["name"] or "", _votes(i), _short_time(i["created_at"])]
         for i in items],
        ["ID", "STATUS", "TOOL", "AGENT", "VOTES", "CREATED"],
    )


def _show(item: dict[str, Any]) -> None:
    requester = (item.get("requester") or {}).get("email")
    policy = item.get("approval_policy") or {}
    outcome = item.get("outcome") or {}
    lines = [
        ("id", item["id"]),
        ("status", item["status"]),
        ("tool", item["tool"] + (f" (server {item['server']})" if item.get("server") else "")),
        ("agent", (item["agent"]["name"] or "") + (f", for {requester}" if requester else "")),
        ("justification", item.get("justification") or ""),
        ("policy", f"{policy.get('name') or '-'} (rule {item.get('rule') or '-'}, risk {item.get('risk') or '-'})"),
        ("approvals", f"{_votes(item)} (declines {(item.get('quorum') or {}).get('declines', 0)})"),
        ("created", item.get("created_at") or ""),
        ("expires", item.get("expires_at") or ""),
        ("decided", item.get("decided_at") or ""),
        ("outcome", " ".join(str(p) for p in (outcome.get("kind"), outcome.get("reason")) if p)),
        ("arguments", json.dumps(item.get("arguments"), sort_keys=True)),
    ]
    for label, value in lines:
        if value:
            typer.echo(f"{label:<14}{value}")
    for vote in item.get("votes") or []:
        reason = f"  {vote['reason']}" if vote.get("reason") else ""
        typer.echo(f"  {vote['decision']:<8}{vote['user']['email']}  {_short_time(vote['created_at'])}"
                   f"  via {vote['channel']}{reason}")


@approvals_app.command("show")
def show(
    approval_id: str = typer.Argument(..., metavar="ID", help="The request's id (from `preloop approvals list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the hub's JSON."),
) -> None:
    """Show one approval request: the call, who asked, the policy, the votes."""
    item: dict[str, Any] = _call(lambda c: c.request("GET", f"/api/v1/approvals/{approval_id}"))
    if as_json:
        _print_json(item)
    else:
        _show(item)


def _vote(approval_id: str, decision: str, reason: str | None, as_json: bool) -> None:
    body = {"reason": reason} if reason else {}
    item: dict[str, Any] = _call(
        lambda c: c.request("POST", f"/api/v1/approvals/{approval_id}/{decision}", json=body)
    )
    if as_json:
        _print_json(item)
        return
    verb = "approved" if decision == "approve" else "declined"
    if item["status"] == "pending":
        typer.echo(f"{verb} {item['id']}: vote recorded, still pending ({_votes(item)} approvals)")
    else:
        typer.echo(f"{verb} {item['id']}: now {item['status']}")


@approvals_app.command("approve")
def approve(
    approval_id: str = typer.Argument(..., metavar="ID", help="The request's id."),
    reason: str = typer.Option(None, "--reason", help="Why; stored with the vote and in the audit log."),
    as_json: bool = typer.Option(False, "--json", help="Print the updated request as JSON."),
) -> None:
    """Vote to approve a request (exit 5 if it is already decided)."""
    _vote(approval_id, "approve", reason, as_json)


@approvals_app.command("decline")
def decline(
    approval_id: str = typer.Argument(..., metavar="ID", help="The request's id."),
    reason: str = typer.Option(None, "--reason", help="Why; some policies require one to decline."),
    as_json: bool = typer.Option(False, "--json", help="Print the updated request as JSON."),
) -> None:
    """Vote to decline a request (exit 5 if it is already decided)."""
    _vote(approval_id, "decline", reason, as_json)


# --- watch ---------------------------------------------------------------------------------------


class _Stop(BaseException):
    """Raised from the SIGTERM handler; a BaseException so no `except Exception` in a library swallows it."""


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None]]:
    """Parse a text/event-stream into (event, data, id) per the WHATWG rules; comments are skipped."""
    event, event_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data), event_id
            event, data, event_id = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            event_id = value


def _event_line(payload: dict[str, Any]) -> str:
    parts = [str(payload.get("at") or ""), str(payload.get("type") or "message")]
    if payload.get("request_id"):
        parts.append(str(payload["request_id"]))
    for key, value in payload.items():
        if key in {"at", "type", "request_id"} or value in (None, "", [], {}):
            continue
        shown = json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, dict | list) else value
        parts.append(f"{key}={shown}")
    return " ".join(parts)


@approvals_app.command("watch")
def watch(as_json: bool = typer.Option(False, "--json", help="One JSON object a line instead of text.")) -> None:
    """Print the organization's events live, one line each, until Ctrl-C or SIGTERM (exit 0).

    When the hub goes away the command reconnects with backoff; it exits 6 only if the hub cannot be
    reached at start.
    """
    settings = _settings()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with HubClient(settings) as client:
            _follow(client, as_json)
    except (KeyboardInterrupt, _Stop):
        raise typer.Exit(0) from None
    except BrokenPipeError:
        # The reader is gone (`watch | head -1`): a normal end. Point stdout at /dev/null so the
        # interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except ApiError as exc:
        _exit(exc.message, exc.exit_code)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _follow(client: HubClient, as_json: bool) -> None:
    connected_once = False
    last_id: str | None = None
    delay = BACKOFF_FIRST
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id  # lets a hub that numbers its events replay the gap
        why = "the hub closed the stream"
        try:
            with client.stream("/api/v1/events", headers=headers, timeout=WATCH_READ_TIMEOUT) as response:
                for event, data, event_id in sse_events(response.iter_lines()):
                    if event_id is not None:
                        last_id = event_id
                    if event == "ready":
                        typer.echo(("reconnected to " if connected_once else "watching ")
                                   + f"{client.settings.api_url} (Ctrl-C to stop)", err=True)
                        if connected_once and last_id is None:
                            typer.echo("note: events sent while disconnected are not replayed "
                                       "(this hub does not number its events)", err=True)
                        connected_once = True
                        delay = BACKOFF_FIRST
                        continue
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        payload = {"type": event, "data": data}
                    if not isinstance(payload, dict):
                        payload = {"type": event, "data": payload}
                    payload.setdefault("type", event)
                    typer.echo(json.dumps(payload, sort_keys=True) if as_json else _event_line(payload))
                    sys.stdout.flush()
        except ApiError as exc:
            retryable = exc.exit_code == EXIT_UNREACHABLE or exc.status in RETRY_STATUSES
            if not (connected_once and retryable):
                raise
            why = exc.message
        typer.echo(f"lost the hub ({why}); reconnecting in {delay:g}s", err=True)
        time.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


# --- export --------------------------------------------------------------------------------------


def _check_date(value: str, option: str) -> str:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _exit(f"{option} {value!r} is not a date; use YYYY-MM-DD or an ISO datetime like 2026-01-31T12:00:00Z",
              EXIT_USAGE)
    return value


@approvals_app.command("export")
def export(
    start: str = typer.Option(..., "--from", help="First day (YYYY-MM-DD) or instant (ISO datetime), inclusive."),
    end: str = typer.Option(..., "--to", help="Last day, inclusive (a bare date includes the whole day)."),
    fmt: str = typer.Option("json", "--format", help="csv or json."),
    output: Path = typer.Option(None, "--output", "-o", help="Write here (atomically) instead of stdout."),
    status: str = typer.Option(None, "--status", help="Only these statuses (comma-separated)."),
) -> None:
    """Export the decision history between two dates, oldest first, as CSV or JSON (for a SIEM or an audit)."""
    if fmt not in {"csv", "json"}:
        _exit(f"--format {fmt!r} is not supported; use csv or json", EXIT_USAGE)
    filters = HistoryFilter(start_date=_check_date(start, "--from"), end_date=_check_date(end, "--to"), status=status)
    params = {"format": fmt, **filters.as_query()}
    partial = output.with_name(output.name + ".part") if output else None

    def work(client: HubClient) -> None:
        with client.stream("/api/v1/approvals/export", params=params, timeout=120.0) as response:
            if partial is None:
                for chunk in response.iter_bytes():
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return
            with partial.open("wb") as sink:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
        os.replace(partial, output)  # only a complete export ever appears under the asked-for name

    try:
        _call(work)
    except OSError as exc:
        _exit(f"cannot write {output}: {exc.strerror}", 1)
    finally:
        if partial is not None and partial.exists():
            partial.unlink()
    if output is not None:
        typer.echo(f"wrote {output}", err=True)
