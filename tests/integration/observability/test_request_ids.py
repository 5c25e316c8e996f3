"""X-Request-Id: accepted when sane, made up otherwise, echoed, and stamped on the request's log lines."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from backend.logs import JsonFormatter
from backend.observability.request_ids import RequestIdFilter, TextFormatter


@pytest.fixture
def access_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="preloop.access")
    caplog.handler.addFilter(RequestIdFilter())
    return caplog


async def test_a_sane_id_is_echoed_and_stamped_on_the_log_lines(client: Any,
                                                               access_records: pytest.LogCaptureFixture) -> None:
    response = await client.get("/health", headers={"X-Request-Id": "edge-7f3a.1:b"})
    assert response.headers["x-request-id"] == "edge-7f3a.1:b"
    [line] = [r for r in access_records.records if r.name == "preloop.access" and r.getMessage() == "GET /health 200"]
    assert line.request_id == "edge-7f3a.1:b"  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(line))["request_id"] == "edge-7f3a.1:b"
    assert TextFormatter("%(message)s").format(line) == "GET /health 200 [edge-7f3a.1:b]"


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "new\nline", "é"])
async def test_a_missing_or_unsafe_id_is_replaced(client: Any, given: str | None) -> None:
    headers = {} if given is None else {"X-Request-Id": given.encode()}
    response = await client.get("/api/v1/me", headers=headers)  # a 401 carries an id too
    assert response.status_code == 401
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_each_request_gets_its_own_id_and_log_lines_outside_requests_get_none(
    client: Any, access_records: pytest.LogCaptureFixture
) -> None:
    first = (await client.get("/no/such/page")).headers["x-request-id"]
    second = (await client.get("/no/such/page")).headers["x-request-id"]
    assert first != second
    logging.getLogger("preloop.test").warning("outside any request")
    outside = [r for r in access_records.records if r.getMessage() == "outside any request"]
    assert outside and not hasattr(outside[0], "request_id")


def test_an_embedded_gateways_log_lines_carry_its_call_id(caplog: pytest.LogCaptureFixture) -> None:
    from mcp_gateway.api_client import REQUEST_ID

    caplog.handler.addFilter(RequestIdFilter())
    token = REQUEST_ID.set("call-42")
    try:
        logging.getLogger("mcp_gateway.checkpoint").warning("upstream slow")
    finally:
        REQUEST_ID.reset(token)
    [record] = [r for r in caplog.records if r.getMessage() == "upstream slow"]
    assert record.request_id == "call-42"  # type: ignore[attr-defined]
