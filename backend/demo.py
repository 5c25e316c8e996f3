"""First start: a demo organization, an admin login (printed once), an agent key and the demo policy."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from backend.accounts import service as accounts
from backend.accounts.tables import Organization
from backend.audit.service import Actor
from backend.hub import Hub

logger = logging.getLogger("preloop.demo")
DEMO_POLICY = Path(__file__).resolve().parent.parent / "policies" / "examples" / "demo.yaml"
ADMIN_EMAIL = "admin@demo.preloop.dev"
SRE_EMAIL = "sre@demo.preloop.dev"
DEVELOPER_EMAIL = "dev@demo.preloop.dev"


async def ensure_demo(hub: Hub) -> dict[str, Any] | None:
    """Create the demo once; return what was created (None when an organization already exists).

    The caller shows the logins (`login_lines`): `preloop serve` prints them last, once everything runs."""
    if await Organization.count() > 0:
        return None
    org = await accounts.create_org("Demo", "demo")
    password = secrets.token_urlsafe(12)
    sre_password = secrets.token_urlsafe(12)
    await accounts.add_user(org["id"], ADMIN_EMAIL, role="admin", name="Demo Admin", password=password)
    # A second approver, so the demo's quorum-2 policy (drop_table) can really be approved.
    await accounts.add_user(org["id"], SRE_EMAIL, role="approver", name="Demo SRE", password=sre_password)
    # The agent's key belongs to a developer, so the admin is never the requester of its own approval.
    dev = await accounts.add_user(org["id"], DEVELOPER_EMAIL, role="viewer", name="Demo Developer")
    await accounts.add_team(org["id"], "sre")
    await accounts.add_member(org["id"], "sre", ADMIN_EMAIL)
    await accounts.add_member(org["id"], "sre", SRE_EMAIL)
    token, _ = await accounts.create_key(org["id"], dev["id"], "demo-agent", scope="agent", labels={"demo": True})
    key_file = hub.settings.server.data_dir / "demo-agent.key"
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(token + "\n")
    if DEMO_POLICY.exists():
        from backend.policy_store.service import apply

        await apply(org["id"], DEMO_POLICY.read_text(), Actor.system("demo setup"), hub.bus, message="demo policy")
    return {
        "org": org, "admin_email": ADMIN_EMAIL, "password": password, "sre_email": SRE_EMAIL,
        "sre_password": sre_password, "key_file": str(key_file),
    }


def login_lines(created: dict[str, Any] | None, key_file: Path) -> list[str]:
    """What a newcomer needs to sign in: the demo logins on first start, where the agent key is."""
    lines: list[str] = []
    if created is not None:
        lines += [
            f"login:    {created['admin_email']}",
            f"password: {created['password']}   (shown once; change it: preloop user passwd EMAIL)",
            f"second approver (for quorum-2 policies): {created['sre_email']} / {created['sre_password']}",
        ]
    if key_file.exists():
        lines.append(f"agent key for the demo gateway: {key_file}")
    return lines


def box(title: str, lines: list[str]) -> str:
    """Lines framed so they stand out at the end of a terminal's scroll-back."""
    width = max(len(title), *(len(line) for line in lines)) if lines else len(title)
    out = ["+" + "-" * (width + 2) + "+", f"| {title.ljust(width)} |", "|" + " " * (width + 2) + "|"]
    out += [f"| {line.ljust(width)} |" for line in lines]
    out.append("+" + "-" * (width + 2) + "+")
    return "\n".join(out)
