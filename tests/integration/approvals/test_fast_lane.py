"""The fast lane (`backend.fastlane`) answers an agent's approval cycle exactly as Litestar does, and passes
everything else on untouched."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from backend.app import create_app
from backend.fastlane import FastLane
from backend.observability import metrics
from tests.helpers import auth
from tests.integration.approvals.support import apply_policy, audit_kinds

# Values that differ between two requests made the same way: compared by shape only.
VOLATILE = {"id", "created_at", "expires_at", "decided_at", "executed_at", "next_escalation_at", "arguments_hash",
            "request_id", "at", "started_at", "finished_at", "approved", "claimed_at", "reported_at"}
VOLATILE_HEADERS = {"date", "x-request-id", "content-length"}


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE and v is not None else _shape(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as readable paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _lane(app: Any) -> FastLane:
    lane = app.asgi_handler.app
    assert isinstance(lane, FastLane)
    return lane


@pytest.fixture
async def both(hub: Any) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """Two clients on two apps of the same running hub: the lane on (the default) and off."""
    off = dataclasses.replace(hub.settings, server=dataclasses.replace(hub.settings.server, fast_path=False))
    clients = {}
    for name, app in (("lane", create_app(hub=hub)), ("litestar", create_app(off, hub=hub))):
        clients[name] = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub.test")
        clients[name].app = app  # type: ignore[attr-defined]
    yield clients
    for client in clients.values():
        await client.aclose()


async def _cycle(http: httpx.AsyncClient, org: Any, run: str) -> list[tuple[int, dict[str, str], Any]]:
    """A cycle with the refusals an agent meets on the way: (status, headers, body) of each answer."""
    agent, alice = auth(org.agent_token), auth(org.approver_tokens["alice"])
    answers = []

    async def post(path: str, body: Any, headers: dict[str, str]) -> Any:
        response = await http.post(path, json=body, headers=headers)
        kept = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
        answers.append((response.status_code, kept, _shape(response.json())))
        return response.json()

    call = {"tool": "restart", "arguments": {"run": run, "n": 1}}
    created = await post("/api/v1/approvals", call, agent)
    await post("/api/v1/approvals", call, agent)  # attached to the pending one: 200
    rid = created["id"]
    await post(f"/api/v1/approvals/{rid}/claim", {"arguments_hash": created["arguments_hash"]}, agent)  # pending
    await post(f"/api/v1/approvals/{rid}/approve", {}, agent)  # an agent's key cannot vote: 403, audited
    await post(f"/api/v1/approvals/{rid}/approve", {"reason": "ok"}, alice)
    await post(f"/api/v1/approvals/{rid}/approve", {}, alice)  # already decided: 409
    await post(f"/api/v1/approvals/{rid}/claim", {"arguments_hash": "0" * 64}, agent)  # wrong hash
    await post(f"/api/v1/approvals/{rid}/claim", {"arguments_hash": created["arguments_hash"]}, alice)  # not runner
    await post(f"/api/v1/approvals/{rid}/claim", {"arguments_hash": created["arguments_hash"]}, agent)
    await post(f"/api/v1/approvals/{rid}/claim", {"arguments_hash": created["arguments_hash"]}, agent)  # twice
    await post(f"/api/v1/approvals/{rid}/outcome", {"success": True, "result_summary": "done"}, agent)
    await post(f"/api/v1/approvals/{rid}/outcome", {"success": False}, agent)  # reported already
    await post("/api/v1/approvals/00000000-0000-4000-8000-000000000000/claim", {"arguments_hash": "0" * 64}, agent)
    keyed = {**agent, "Idempotency-Key": f"retry-{run}"}
    second = {"tool": "restart", "arguments": {"run": run, "n": 2}}
    first = await post("/api/v1/approvals", second, keyed)
    again = await post("/api/v1/approvals", second, keyed)
    assert again["id"] == first["id"]
    await post("/api/v1/approvals", {**second, "arguments": {"other": True}}, keyed)  # the key reused: 409
    return answers


async def test_the_lane_answers_a_cycle_as_litestar_does(both: dict[str, httpx.AsyncClient], org: Any) -> None:
    """The same cycle, refusals included, through an app with the lane and one without: the same statuses,
    headers (security headers too) and bodies, but for ids and times; the lane answered every one of them, and
    what the service audits (an agent's refused vote) is audited once either way."""
    await apply_policy(both["lane"], org)
    lane, litestar = _lane(both["lane"].app), _lane(both["litestar"].app)  # type: ignore[attr-defined]
    got = {name: await _cycle(http, org, f"cycle-{name}") for name, http in both.items()}
    statuses = [status for status, _, _ in got["lane"]]
    assert statuses == [201, 200, 409, 403, 200, 409, 409, 403, 200, 409, 200, 409, 404, 201, 201, 409]
    for answers in zip(got["lane"], got["litestar"], strict=True):
        # each app's cycle has its own arguments (the same ones would attach to the other's request)
        lane_text, litestar_text = (json.dumps(a, sort_keys=True).replace(f"cycle-{n}", "cycle-")
                                    for a, n in zip(answers, both, strict=True))
        assert _differences(json.loads(lane_text), json.loads(litestar_text)) == []
    assert lane.answered == len(got["lane"]) and litestar.answered == 0
    for name in both:
        rows = await both[name].get("/api/v1/approvals?limit=100", headers=auth(org.admin_token))
        [rid] = [r["id"] for r in rows.json() if r["arguments"] == {"run": f"cycle-{name}", "n": 1}]
        assert (await audit_kinds(org, rid)).count("approval.vote_rejected") == 1


async def test_the_lane_counts_requests_under_litestars_route_names(
    both: dict[str, httpx.AsyncClient], org: Any
) -> None:
    """`preloop_http_requests_total` names a route by Litestar's template, whichever answered it."""
    await apply_policy(both["lane"], org)

    def count(route: str, status: str) -> float:
        return metrics.HTTP_REQUESTS.labels("POST", route, status)._value.get()

    routes = {route.path: route.path_format for route in both["lane"].app.routes}  # type: ignore[attr-defined]
    create, claim = routes["/api/v1/approvals"], routes["/api/v1/approvals/{approval_id:uuid}/claim"]
    before = count(create, "201"), count(claim, "404")
    for http in both.values():
        await http.post("/api/v1/approvals", json={"tool": "restart", "arguments": {"m": id(http)}},
                        headers=auth(org.agent_token))
        await http.post("/api/v1/approvals/00000000-0000-4000-8000-000000000000/claim",
                        json={"arguments_hash": "0" * 64}, headers=auth(org.agent_token))
    assert (count(create, "201") - before[0], count(claim, "404") - before[1]) == (2, 2)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/api/v1/approvals", {"tool": "restart"}, {"Authorization": "Bearer pl_wrong"}, 401, "not_authenticated"),
        ("/api/v1/approvals", {"tool": "restart"}, {"Authorization": "Basic eDp5"}, 401, "not_authenticated"),
        ("/api/v1/approvals", {"tool": "restart"}, "approver", 403, "agents_only"),
        ("/api/v1/approvals", {"tool": "restart", "surprise": 1}, "agent", 400, "invalid_input"),
        ("/api/v1/approvals", {"tool": "restart", "arguments": {"a": "x\u0000"}}, "agent", 400, "nul_character"),
        ("/api/v1/approvals", {"tool": 5}, "agent", 400, "invalid_input"),
        ("/api/v1/approvals?x=1", {"tool": "restart", "arguments": {"q": 1}}, "agent", 201, None),
        ("/api/v1/approvals/", {"tool": "restart", "arguments": {"q": 2}}, "agent", 201, None),
        ("/api/v1/approvals", "not json", "agent", 400, None),
        ("/api/v1/approvals", {"tool": "restart", "arguments": {"q": 3}}, "agent-text", 415, "unsupported_media_type"),
        ("/api/v1/approvals", {"tool": "restart", "arguments": {"q": 4}}, "agent-long-key", 400, "invalid_input"),
        ("/api/v1/approvals/not-a-uuid/claim", {"arguments_hash": "0" * 64}, "agent", 404, "not_found"),
    ],
)
async def test_what_the_lane_passes_on_litestar_answers(
    both: dict[str, httpx.AsyncClient], org: Any,
    path: str, body: Any, headers: Any, status: int, code: str | None,
) -> None:
    """Requests that are not plain (a wrong or missing key, a person creating, a body that does not decode or
    fails the checks, a query string or trailing slash, another media type, an over-long Idempotency-Key,
    an id that is not a uuid) go to Litestar, the lane having done nothing: the same answer either way."""
    await apply_policy(both["lane"], org)
    lane = _lane(both["lane"].app)  # type: ignore[attr-defined]
    named = {
        "agent": auth(org.agent_token),
        "approver": auth(org.approver_tokens["alice"]),
        "agent-text": {**auth(org.agent_token), "Content-Type": "text/plain"},
        "agent-long-key": {**auth(org.agent_token), "Idempotency-Key": "k" * 201},
    }
    sent = named[headers] if isinstance(headers, str) else headers
    answers = []
    for name, http in both.items():
        if isinstance(body, str):
            response = await http.post(path, content=body, headers={**sent, "Content-Type": "application/json"})
        elif "Content-Type" in sent:
            response = await http.post(path, content=json.dumps(body), headers=sent)
        else:
            payload = body if not isinstance(body.get("arguments"), dict) or "q" not in body["arguments"] else {
                **body, "arguments": {**body["arguments"], "via": name}
            }
            response = await http.post(path, json=payload, headers=sent)
        answers.append((response.status_code, _shape(response.json())))
    assert answers[0][0] == status, answers[0]
    if code is not None:
        assert answers[0][1]["error"]["code"] == code
    for _, answer in answers:  # each app's request had its own arguments (`via`), so it was not attached
        if "arguments" in answer:
            assert answer.pop("arguments") == answer.pop("arguments_to_run")
    assert _differences(answers[0], answers[1]) == []
    assert lane.answered == 0


def test_a_live_hub_answers_through_the_lane(live_hub: Any) -> None:
    """Over real HTTP (uvicorn's scope: its headers, its body messages) the lane takes the cycle."""
    from tests.helpers import make_org

    org = live_hub.call(make_org())
    with httpx.Client(base_url=live_hub.url, timeout=10) as http:
        from tests.integration.approvals.support import POLICY

        policy = http.post("/api/v1/policies", json={"source": POLICY}, headers=auth(org.admin_token))
        assert policy.status_code == 201, policy.text
        created = http.post("/api/v1/approvals", json={"tool": "restart", "arguments": {"live": 1}},
                            headers=auth(org.agent_token))
        assert created.status_code == 201, created.text
        assert created.headers["content-type"] == "application/json"
        assert created.headers["x-content-type-options"] == "nosniff"
        assert created.headers["x-request-id"]
        rid = created.json()["id"]
        approved = http.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=auth(org.approver_tokens["alice"]))
        assert approved.json()["status"] == "approved"
        claimed = http.post(f"/api/v1/approvals/{rid}/claim", json={"arguments_hash": created.json()["arguments_hash"]},
                            headers=auth(org.agent_token))
        assert claimed.json()["status"] == "executing"
        reported = http.post(f"/api/v1/approvals/{rid}/outcome", json={"success": True}, headers=auth(org.agent_token))
        assert reported.json()["status"] == "executed"
    assert _lane(live_hub.app).answered == 4
