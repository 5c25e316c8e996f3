"""Kill the worker process in the middle of a fan-out: every delivery still happens, once per channel."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiosmtpd.controller import Controller

from backend.accounts import service as accounts
from backend.notifications import service
from backend.notifications.tables import NotificationDelivery
from tests.helpers import free_port
from tests.integration.approvals.support import apply_policy, create

pytestmark = pytest.mark.slow

APPROVERS = 40
POLICY = """
version: "1"
approval_policies:
  - {name: everyone, teams: [sre], quorum: 1, timeout: 1h, channels: [email, webhook]}
tools:
  - {name: deploy, action: require_approval, approval_policy: everyone}
"""


class SlowMailbox:
    """An SMTP server that takes its time to accept, and counts a mail only if its sender is still
    there to hear the 250 (a worker killed mid-DATA never learnt it was accepted)."""

    def __init__(self) -> None:
        self.accepted: list[str] = []  # Message-IDs

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.3)
        transport = server.transport
        if transport is None or transport.is_closing():
            return "451 sender went away"
        text = envelope.original_content.decode(errors="replace")
        message_id = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Message-ID:"))
        self.accepted.append(message_id)
        return "250 OK"


def _worker(settings: Any, smtp_port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PRELOOP_DATABASE_URL": settings.database_url,
        "PRELOOP_REDIS_URL": settings.redis.url,
        "PRELOOP_DATA_DIR": str(settings.server.data_dir),
        "PRELOOP_SECRET_KEY": "test-secret",
        "PRELOOP_SWEEP_SECONDS": "1",
        "PRELOOP_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "PRELOOP_SMTP_FROM": "preloop@hub.test",
        "PRELOOP_NOTIFY_SEND_TIMEOUT_SECONDS": "2",
        "PRELOOP_LOG_LEVEL": "warning",
    }
    command = [str(Path(sys.executable).parent / "preloop"), "worker"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _final(request_id: str, count: int, timeout: float) -> list[dict[str, Any]]:
    with anyio.fail_after(timeout):
        while True:
            rows = await service.deliveries_for(request_id, with_attempts=True)
            recorded = [r for r in rows if r["status"] == "sent" and any(h["status"] == "sent" for h in r["history"])]
            if len(rows) >= count and len(recorded) == len(rows):  # sent, with the attempt and audit written
                return rows
            await anyio.sleep(0.1)


async def test_killing_the_worker_mid_fan_out_loses_nothing_and_sends_once_per_channel(
    client: Any, org: Any, hub: Any, receiver: Any
) -> None:
    for n in range(APPROVERS - 2):  # alice and bob are in sre already
        user = await accounts.add_user(org.id, f"person{n}@acme.test", role="approver")
        await accounts.add_member(org.id, "sre", user["email"])
    await apply_policy(client, org, POLICY)
    await client.put(
        "/api/v1/channels/webhook",
        json={"url": receiver.url, "secret": "kill-test-secret-123"},
        headers={"Authorization": f"Bearer {org.admin_token}"},
    )
    box = SlowMailbox()
    smtp_port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    first = second = None
    try:
        rid = (await create(client, org, "deploy"))["id"]
        total = APPROVERS * 2
        first = _worker(hub.settings, smtp_port)
        with anyio.fail_after(60):  # kill once the fan-out is under way, with sends in flight
            while len(box.accepted) < 5:
                await anyio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        in_flight = await NotificationDelivery.count().where(
            (NotificationDelivery.request == rid) & (NotificationDelivery.status == "sending")
        )
        done_before = await NotificationDelivery.count().where(
            (NotificationDelivery.request == rid) & (NotificationDelivery.status == "sent")
        )
        assert done_before < total, "the worker finished before it was killed; nothing was tested"
        # The killed worker's jobs stay reserved in Redis; the sweep of a new worker takes the rows over.
        await NotificationDelivery.update(
            {NotificationDelivery.created_at: NotificationDelivery.created_at - timedelta(minutes=1)}
        ).where(NotificationDelivery.request == rid)
        second = _worker(hub.settings, smtp_port)
        rows = await _final(rid, total, timeout=90)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
        controller.stop()
    assert {r["status"] for r in rows} == {"sent"}
    assert all(sum(h["status"] == "sent" for h in r["history"]) == 1 for r in rows)
    mail_ids = Counter(box.accepted)
    hook_ids = Counter(headers["preloop-delivery"] for headers, _ in receiver.calls)
    by_channel = {r["channel"]: set() for r in rows}
    for r in rows:
        by_channel[r["channel"]].add(r["id"])
    # Every delivery reached its channel; a receiver that keys on the delivery id sees each once.
    assert {m.strip("<>").split("@")[0] for m in mail_ids} == by_channel["email"]
    assert set(hook_ids) == by_channel["webhook"]
    # A repeat can only be a message the killed worker had in flight and never saw acknowledged.
    repeats = sum(c - 1 for c in mail_ids.values()) + sum(c - 1 for c in hook_ids.values())
    assert repeats <= in_flight
    print(f"killed with {in_flight} in flight, {done_before} sent; repeats seen by receivers: {repeats}")
