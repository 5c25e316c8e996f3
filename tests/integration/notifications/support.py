"""Policies and helpers for the notification tests."""

from __future__ import annotations

import re
from email.message import EmailMessage
from typing import Any

import anyio

from backend.notifications.service import deliveries_for

POLICY = """
version: "1"
name: notify-tests
approval_policies:
  - name: mail
    approvers: [carol@acme.test]
    teams: [sre]
    quorum: 1
    timeout: 1h
    channels: [email]
  - name: mail-reason
    approvers: [alice@acme.test, bob@acme.test]
    quorum: 2
    timeout: 1h
    channels: [email]
    require_decline_reason: true
  - name: mail-and-hook
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [email, webhook]
  - name: strong
    approvers: [alice@acme.test]
    timeout: 1h
    channels: [email]
    require_passkey: true
  - name: phone
    approvers: [alice@acme.test, bob@acme.test]
    timeout: 1h
    channels: [push, email]
tools:
  - name: deploy
    server: infra
    description: Deploys to production need a human
    action: require_approval
    approval_policy: mail
    risk: high
  - name: drop_table
    action: require_approval
    approval_policy: mail-reason
  - name: rotate_keys
    action: require_approval
    approval_policy: mail-and-hook
    risk: critical
  - name: wire_money
    action: require_approval
    approval_policy: strong
  - name: restart
    action: require_approval
    approval_policy: phone
defaults:
  unknown_tools: deny
"""


def link_of(mail: EmailMessage, decision: str) -> str:
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(rf"^{decision.title()}: (\S+)\r?$", text, re.MULTILINE)
    assert found, text
    return found.group(1)


def html_link_of(mail: EmailMessage, label: str) -> str:
    html = mail.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    found = re.search(rf'<a href="([^"]+)"[^>]*>{label}</a>', html)
    assert found, html
    return found.group(1)


async def settled(request_id: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Wait until `count` deliveries of the request are in a final state."""
    with anyio.fail_after(timeout):
        while True:
            rows = await deliveries_for(request_id)
            done = [r for r in rows if r["status"] in {"sent", "failed", "skipped"}]
            if len(done) >= count:
                return rows
            await anyio.sleep(0.05)
