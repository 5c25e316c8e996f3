"""Desktop screenshots of every console page into docs/console/*.png, from a throwaway hub.

    .venv/bin/python docs/screenshots.py [OUT_DIR]

Starts the real hub in-process (SQLite and, unless PRELOOP_REDIS_URL is set, an embedded Redis in a
temporary data dir), fills it with a small organization, and drives Debian's Chromium
(PRELOOP_CHROMIUM, default /usr/bin/chromium) through the pages.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "console"
CHROMIUM = os.environ.get("PRELOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
POLICY = (ROOT / "policies" / "examples" / "demo.yaml").read_text()


async def _seed(hub_url: str) -> dict[str, str]:
    from backend.accounts import service

    org = await service.create_org("Acme", "acme")
    await service.add_user(org["id"], "admin@acme.test", role="admin", name="Ada Admin",
                           password="admin-password")  # noqa: S106 - a throwaway hub's login
    await service.add_team(org["id"], "sre")
    for name in ("alice", "bob"):
        await service.add_user(org["id"], f"{name}@acme.test", role="approver", password=f"pw-{name}")
        await service.add_member(org["id"], "sre", f"{name}@acme.test")
    await service.add_member(org["id"], "sre", "admin@acme.test")
    dev = await service.add_user(org["id"], "dev@acme.test", role="viewer")
    admin = await service.get_user(org["id"], "admin@acme.test")
    agent, _ = await service.create_key(org["id"], dev["id"], "release-bot", scope="agent", labels={"team": "web"})
    admin_key, _ = await service.create_key(org["id"], admin["id"], "admin-cli", scope="admin")
    alice = await service.get_user(org["id"], "alice@acme.test")
    alice_key, _ = await service.create_key(org["id"], alice["id"], "alice-phone", scope="approver")
    return {"agent": agent, "admin": admin_key, "alice": alice_key}


def _fill(url: str, keys: dict[str, str]) -> str:
    """Apply the demo policy twice (two versions) and hold a few calls; return one pending id."""
    with httpx.Client(base_url=url, timeout=20) as http:
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        agent = {"Authorization": f"Bearer {keys['agent']}"}
        http.post("/api/v1/policies", json={"source": POLICY, "message": "demo policy"}, headers=admin)
        http.post("/api/v1/policies", json={"source": POLICY.replace("quorum: 2", "quorum: 1", 1),
                                            "message": "one approver is enough"}, headers=admin)
        held = []
        for table in ("old_users", "audit_2019", "sessions"):
            answer = http.post("/api/v1/approvals", headers=agent, json={
                "tool": "drop_table", "server": "demo", "arguments": {"table": table},
                "justification": f"clean up {table}"})
            held.append(answer.json()["id"])
        http.post(f"/api/v1/approvals/{held[0]}/approve", headers={"Authorization": f"Bearer {keys['alice']}"})
        http.post(f"/api/v1/approvals/{held[1]}/decline", json={"reason": "no backup yet"},
                  headers={"Authorization": f"Bearer {keys['alice']}"})
        for version in ("2.4.0", "2.4.1", "2.5.0", "2.5.1", "2.6.0"):  # approved every time: "relax"
            answer = http.post("/api/v1/approvals", headers=agent, json={
                "tool": "deploy_production", "server": "demo", "justification": "release",
                "arguments": {"environment": "production", "version": version}})
            http.post(f"/api/v1/approvals/{answer.json()['id']}/approve",
                      headers={"Authorization": f"Bearer {keys['alice']}"})
        for key, text in (("alice", "Is sessions still read by the nightly report?"),
                          ("admin", "Not since 2.5.0; the report reads sessions_v2.")):
            http.post(f"/api/v1/approvals/{held[2]}/comments", json={"text": text},
                      headers={"Authorization": f"Bearer {keys[key]}"})
        records = [{"event_id": f"shot-{n}", "tool": "read_file", "server": "demo", "decision": "allow"}
                   for n in range(12)]  # the gateway's call records: "calls per day" on the keys page
        http.post("/api/v1/audit/calls", json={"records": records}, headers=agent)
        return str(held[2])


def main(out: Path = OUT) -> list[Path]:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from backend.app import create_app
    from backend.settings import load_settings

    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="preloop-shots-"))
    env = {"PRELOOP_DATA_DIR": str(data), "PRELOOP_DEMO": "false", "PRELOOP_SECRET_KEY": "screenshots",
           "PRELOOP_REDIS_URL": os.environ.get("PRELOOP_REDIS_URL", "")}
    settings = load_settings(env)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None,
                                           lifespan="on", timeout_graceful_shutdown=2))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the hub did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    written: list[Path] = []
    try:
        keys = asyncio.run_coroutine_threadsafe(_seed(url), loop).result(60)
        pending = _fill(url, keys)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()

            def shot(name: str) -> None:
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=True)
                written.append(path)

            page.goto(f"{url}/console/login")
            shot("login")
            page.fill("#email", "admin@acme.test")
            page.fill("#password", "admin-password")
            page.click("button[type=submit]")
            page.wait_for_selector("#pending")
            page.wait_for_selector("#bell-count[data-count]")
            page.click("#bell-button")
            shot("approvals")
            page.goto(f"{url}/console/approvals/{pending}")
            shot("approval-detail")
            page.goto(f"{url}/console/history")
            shot("history")
            page.goto(f"{url}/console/policies")
            page.fill("#ex-tool", "drop_table")
            page.fill("#ex-server", "demo")
            page.fill("#ex-args", '{"table": "users"}')
            page.click("#explain-form button[type=submit]")
            page.wait_for_selector("#explain-decision")
            page.locator("#source").fill(POLICY.replace("action: deny", "action: dny", 1))
            page.wait_for_selector("#issues li")
            shot("policies")
            page.goto(f"{url}/console/policies/versions/1")
            shot("policy-version")
            page.goto(f"{url}/console/autonomy")
            page.wait_for_selector("#autonomy")
            shot("autonomy")
            page.click("section.suggestion[data-kind='relax'] a")
            page.wait_for_selector("#rules ol li")
            page.click("#dry-run-button")
            page.wait_for_selector("#dry-run-status")
            page.locator("#rules-h").scroll_into_view_if_needed()
            shot("policy-dry-run")
            page.goto(f"{url}/console/audit")
            shot("audit")
            page.goto(f"{url}/console/keys")
            page.fill("#key-name", "nightly-etl")
            page.click("form[action='/console/keys'] button[type=submit]")
            page.wait_for_selector("#new-token")
            shot("keys")
            page.goto(f"{url}/console/people")
            page.fill("#person-email", "pat@acme.test")
            page.fill("#person-name", "Pat Payments")
            page.click("#add-person button[type=submit]")
            page.wait_for_selector("#invite-link")
            shot("people")
            page.goto(f"{url}/console/teams")
            shot("teams")
            page.goto(f"{url}/console/channels")
            page.fill("#slack-token", "xoxb-0000-screenshot-token")
            page.fill("#slack-signing", "a-slack-signing-secret-0123456789")
            page.fill("#slack-channel", "C0APPROVALS")
            page.click("button[aria-label='Save slack settings']")
            page.wait_for_selector("#channels-message")
            page.fill("#webhook-url", "https://hooks.example.test/preloop")
            page.fill("#webhook-secret", "a-signing-secret-of-32-characters")
            page.click("button[aria-label='Save webhook settings']")
            page.wait_for_selector("#channels-message")
            page.click("button[aria-label='Send test notification (webhook, to me)']")
            page.wait_for_selector("#test-answer")
            shot("channels")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        loop.close()
    return written


if __name__ == "__main__":
    for written_path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(written_path.relative_to(ROOT) if written_path.is_relative_to(ROOT) else written_path)
