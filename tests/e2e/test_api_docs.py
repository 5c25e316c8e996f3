"""The API reference at /schema renders in real Chromium with every request kept on the hub (no CDN)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import LiveHub

pytestmark = pytest.mark.e2e


def test_schema_page_renders_offline(live_hub: LiveHub, browser: Any) -> None:
    hub_origin = urlsplit(live_hub.url).netloc
    elsewhere: list[str] = []

    def only_the_hub(route: Any) -> None:
        if urlsplit(route.request.url).netloc == hub_origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page = browser.new_page()
    page.route("**/*", only_the_hub)
    page.goto(f"{live_hub.url}/schema")
    page.wait_for_selector(".opblock-summary-path:has-text('/api/v1/approvals')", timeout=15_000)
    assert page.locator("button.authorize").count() == 1  # bearer keys can be entered on the page
    assert elsewhere == [], f"/schema tried to load from outside the hub: {elsewhere}"
