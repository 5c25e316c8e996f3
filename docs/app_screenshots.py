"""Phone-sized screenshots of every approver-app screen into docs/app/*.png, from a throwaway hub.

    .venv/bin/python docs/app_screenshots.py [OUT_DIR]

Starts the real hub in-process (SQLite and, unless PRELOOP_REDIS_URL is set, an embedded Redis in a
temporary data dir), seeds the organization docs/screenshots.py uses, holds a few calls, and drives
Debian's Chromium (PRELOOP_CHROMIUM, default /usr/bin/chromium) at 390x844 through the app.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

from screenshots import CHROMIUM, CHROMIUM_ARGS, _seed  # noqa: E402 - docs/screenshots.py, next to this file

OUT = ROOT / "docs" / "app"

POLICY = """
version: "1"
approval_policies:
  - name: sre
    teams: [sre]
    timeout: 45m
    decline_reasons: ["Not during a freeze", "Wrong environment", "Ask the owner first"]
tools:
  - name: deploy
    rules:
      - {action: require_approval, approval_policy: sre, risk: high, description: "ships to users"}
  - name: drop_table
    rules:
      - {action: require_approval, approval_policy: sre, risk: critical, description: "dropping tables loses data"}
"""


@contextmanager
def _hub() -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    import uvicorn

    from backend.app import create_app
    from backend.settings import load_settings

    data = Path(tempfile.mkdtemp(prefix="preloop-app-shots-"))
    settings = load_settings({"PRELOOP_DATA_DIR": str(data), "PRELOOP_DEMO": "false",
                              "PRELOOP_SECRET_KEY": "app-screenshots",
                              "PRELOOP_REDIS_URL": os.environ.get("PRELOOP_REDIS_URL", "")})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None,
                                           lifespan="on", timeout_graceful_shutdown=2))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - started > 60:
            raise SystemExit("the hub did not start")
        time.sleep(0.05)
    try:
        yield f"http://localhost:{port}", loop
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        loop.close()


def _hold(url: str, keys: dict[str, str]) -> tuple[list[str], str]:
    """Apply the policy, hold four calls and decide one; return the pending ids and an invite link."""
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    agent = {"Authorization": f"Bearer {keys['agent']}"}
    with httpx.Client(base_url=url, timeout=20) as http:
        http.post("/api/v1/policies", json={"source": POLICY, "message": "app screenshots"}, headers=admin)
        ids = []
        for tool, arguments, why in (
            ("drop_table", {"table": "audit_2019"}, "the 2019 audit data is archived"),
            ("deploy", {"environment": "production", "version": "2.6.0", "replicas": 40}, "release 2.6.0"),
            ("deploy", {"environment": "staging", "version": "2.6.1"}, "try the hotfix"),
            ("drop_table", {"table": "sessions_old"}, "cleanup"),
        ):
            answer = http.post("/api/v1/approvals", headers=agent,
                               json={"tool": tool, "arguments": arguments, "justification": why})
            ids.append(answer.json()["id"])
        http.post(f"/api/v1/approvals/{ids[3]}/decline", json={"reason": "Ask the owner first"},
                  headers={"Authorization": f"Bearer {keys['alice']}"})
        for key, text in (("admin", "40 replicas is the Black Friday size; the canary ran clean for an hour."),
                          ("alice", "Checked the canary dashboard, looks fine to me.")):
            http.post(f"/api/v1/approvals/{ids[1]}/comments", json={"text": text},
                      headers={"Authorization": f"Bearer {keys[key]}"})
        http.post("/api/v1/users", json={"email": "dana@acme.test", "role": "approver"}, headers=admin)
        link = http.post("/api/v1/users/dana@acme.test/invite", headers=admin).json()["link"]
    return ids[:3], link[link.index("/app/"):]


def main(out: Path = OUT) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with _hub() as (url, loop), sync_playwright() as playwright:
        keys = asyncio.run_coroutine_threadsafe(_seed(url), loop).result(60)
        pending, invite = _hold(url, keys)
        profile = Path(tempfile.mkdtemp(prefix="preloop-app-profile-"))
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
        page: Any = context.pages[0] if context.pages else context.new_page()

        def shot(name: str) -> None:
            path = out / f"{name}.png"
            page.screenshot(path=str(path))
            written.append(path)

        page.goto(f"{url}/app/")
        page.wait_for_selector("#login:visible")
        shot("sign-in")
        page.fill("input[name=email]", "alice@acme.test")
        page.fill("input[name=password]", "pw-alice")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector(f"#requests article[data-id='{pending[1]}'] .flags")
        page.wait_for_function("navigator.serviceWorker.controller !== null")
        shot("inbox")
        for rid in pending[1:]:
            page.locator(f"#requests article[data-id='{rid}'] input.pick").check()
        page.locator(f"#requests article[data-id='{pending[0]}'] .chip >> nth=0").click()
        shot("batch")
        page.goto(f"{url}/app/#/requests/{pending[1]}")
        page.wait_for_selector(f"#detail-body article[data-id='{pending[1]}']")
        shot("detail")
        page.locator("#detail-body .comment-form textarea").fill("Approving after the 14:00 freeze ends.")
        page.locator("#detail-body .comment-form").scroll_into_view_if_needed()
        shot("discussion")
        page.click("#nav-history")
        page.wait_for_selector("#history-list li")
        shot("history")
        page.click("#nav-settings")
        page.wait_for_selector("#settings:visible")
        page.click("#passkeys summary")
        page.wait_for_selector("#passkey-list li")
        shot("settings")
        page.click("#nav-inbox")
        page.wait_for_selector("#requests article")
        context.set_offline(True)
        page.reload()
        page.wait_for_selector("#offline:visible")
        page.wait_for_selector("#requests article")
        shot("offline")
        context.set_offline(False)
        page.click("#signout")
        page.wait_for_selector("#login:visible")
        page.goto(f"{url}{invite}")
        page.wait_for_selector("#invite:visible")
        shot("set-password")
        page.fill("#invite-form input[name=password]", "dana-password-1")
        page.fill("#invite-form input[name=confirm]", "dana-password-1")
        page.click("#invite-form button[type=submit]")
        page.wait_for_selector("#enrol:visible")
        shot("add-passkey")
        context.close()
    return written


if __name__ == "__main__":
    for written_path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(written_path.relative_to(ROOT) if written_path.is_relative_to(ROOT) else written_path)
