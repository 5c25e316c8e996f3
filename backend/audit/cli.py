"""`preloop audit`: export the chain with the passkeys' public keys; verify an export offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@audit_app.command("export")
def export_command(
    out: Path = typer.Option(Path("-"), "--out", "-o", help="File to write; '-' for standard output."),
    org: str = typer.Option("", help="Organization slug; default: the oldest organization."),
) -> None:
    """Write the org's whole audit chain and its people's passkey public keys as JSON."""
    from backend.cli import _run_db, _settings

    async def work() -> dict[str, Any]:
        from backend.accounts import service
        from backend.audit.export import export_org

        found = await (service.get_org_by_slug(org) if org else service.default_org())
        return await export_org(found["id"])

    text = json.dumps(_run_db(_settings(), work), indent=1, sort_keys=True) + "\n"
    if str(out) == "-":
        sys.stdout.write(text)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


@audit_app.command("verify")
def verify_command(
    signatures: Path = typer.Option(
        ...,
        "--signatures",
        help="An export (`preloop audit export` or GET /api/v1/audit/export); checked offline, no hub needed.",
    ),
) -> None:
    """Check an export's hash chain and that each passkey-confirmed decision was signed by the voter's key."""
    from backend.audit.signatures import verify_export
    from backend.cli import fail

    try:
        export = json.loads(signatures.read_text())
    except OSError as exc:
        raise fail(f"cannot read {signatures}: {exc.strerror}") from None
    except ValueError as exc:
        raise fail(f"{signatures} is not JSON ({exc}); pass a file written by `preloop audit export`") from None
    if not isinstance(export, dict) or not isinstance(export.get("events"), list):
        raise fail(f"{signatures} is not an audit export: it needs an 'events' list")
    report = verify_export(export)
    typer.echo(
        f"chain: {'ok' if report.chain_ok else 'BROKEN'} ({report.events} events); "
        f"passkey-confirmed decisions: {report.verified} of {report.signed_decisions} verified"
    )
    for item in report.problems:
        typer.echo(f"  seq {item['seq']} request {item['request_id']}: {item['problem']}")
    if not report.ok:
        raise typer.Exit(1)
