"""Every operation of the served OpenAPI document, times every kind of caller → the expected status.

The table below is docs/security.md in code. A new operation without a row fails
`test_every_served_operation_has_a_row`, so nobody adds an endpoint without deciding who may call it.
Each cell gets fresh objects (a new pending request to vote on, a new grant to revoke), so cells do
not depend on each other. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.security.support import (
    POLICY,
    WHO,
    Cast,
    approved,
    asgi_status,
    executing,
    grant_id,
    make_cast,
    pending,
)

Call = tuple[str, str, dict[str, Any]]  # method, path, httpx keyword arguments
Prepare = Callable[[Any, Cast], Awaitable[Call]]


def row(*statuses: int) -> dict[str, int]:
    """Statuses in WHO order: anonymous, agent, viewer, approver, ineligible, admin, other_admin."""
    return dict(zip(WHO, statuses, strict=True))


EVERYONE = row(200, 200, 200, 200, 200, 200, 200)
SIGNED_IN = row(401, 200, 200, 200, 200, 200, 200)
PEOPLE = row(401, 403, 200, 200, 200, 200, 200)
ADMINS = row(401, 403, 403, 403, 403, 200, 200)
ADMINS_CREATE = row(401, 403, 403, 403, 403, 201, 201)
# Reading one request: the agent that made it and the org's people; another org's admin gets 404.
ONE_REQUEST = row(401, 200, 200, 200, 200, 200, 404)
VOTE = row(401, 403, 403, 200, 403, 200, 404)
RUNNER = row(401, 200, 403, 403, 403, 200, 404)
NOBODY = row(401, 401, 401, 401, 401, 401, 401)  # only a request signed by Slack gets through


def fixed(method: str, path: str, **kwargs: Any) -> Prepare:
    async def prepare(_client: Any, _cast: Cast) -> Call:
        return method, path, kwargs

    return prepare


def on_pending(method: str, suffix: str, **kwargs: Any) -> Prepare:
    async def prepare(client: Any, cast: Cast) -> Call:
        request = await pending(client, cast)
        return method, f"/api/v1/approvals/{request['id']}{suffix}", kwargs

    return prepare


async def _create_user(_client: Any, cast: Cast) -> Call:
    return "POST", "/api/v1/users", {"json": {"email": f"{cast.unique('u')}@acme.test", "role": "viewer"}}


async def _create_team(_client: Any, cast: Cast) -> Call:
    return "POST", "/api/v1/teams", {"json": {"name": cast.unique("team")}}


async def _create_key(_client: Any, cast: Cast) -> Call:
    return "POST", "/api/v1/keys", {"json": {"name": cast.unique("key"), "scope": "agent"}}


async def _calls(_client: Any, cast: Cast) -> Call:
    record = {"event_id": cast.unique("evt"), "tool": "read_logs", "decision": "allow"}
    return "POST", "/api/v1/audit/calls", {"json": {"records": [record]}}


async def _create_approval(_client: Any, cast: Cast) -> Call:
    body = {"tool": "deploy", "server": "infra", "arguments": {"run": cast.unique("c")}}
    return "POST", "/api/v1/approvals", {"json": body}


async def _batch(client: Any, cast: Cast) -> Call:
    request = await pending(client, cast)
    return "POST", "/api/v1/approvals/batch", {"json": {"ids": [request["id"]], "decision": "approve"}}


async def _claim(client: Any, cast: Cast) -> Call:
    request = await approved(client, cast)
    return "POST", f"/api/v1/approvals/{request['id']}/claim", {"json": {"arguments_hash": request["arguments_hash"]}}


async def _report(client: Any, cast: Cast) -> Call:
    request = await executing(client, cast)
    return "POST", f"/api/v1/approvals/{request['id']}/outcome", {"json": {"success": True}}


async def _wait_get(client: Any, cast: Cast) -> Call:
    request = await pending(client, cast)
    return "GET", "/api/v1/approvals/wait", {"params": {"ids": request["id"], "timeout": 0}}


async def _wait_post(client: Any, cast: Cast) -> Call:
    request = await pending(client, cast)
    return "POST", "/api/v1/approvals/wait", {"json": {"ids": [request["id"]], "timeout": 0}}


async def _revoke(client: Any, cast: Cast) -> Call:
    return "POST", f"/api/v1/grants/{await grant_id(client, cast)}/revoke", {"json": {}}


async def _slack_click(_client: Any, _cast: Cast) -> Call:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    return "POST", "/api/v1/integrations/slack/interactions", {"content": b"payload=%7B%7D", "headers": form}


async def _logout(_client: Any, _cast: Cast) -> Call:
    return "POST", "/api/v1/auth/logout", {}


def policy_call(path: str) -> Prepare:
    async def prepare(_client: Any, cast: Cast) -> Call:
        source = POLICY.format(slug="acme") + f"# {cast.unique('v')}\n"  # a new version each time
        return "POST", path, {"json": {"source": source}}

    return prepare


# operation id -> (how to call it, expected status per caller)
MATRIX: dict[str, tuple[Prepare, dict[str, int]]] = {
    "health": (fixed("GET", "/health"), EVERYONE),
    "whoami": (fixed("GET", "/api/v1/me"), SIGNED_IN),
    "login": (
        fixed("POST", "/api/v1/auth/login", json={"email": "ian@acme.test", "password": "pw-ian", "org": "acme"}),
        row(201, 201, 201, 201, 201, 201, 201),
    ),
    "logout": (_logout, row(204, 204, 204, 204, 204, 204, 204)),
    "list_users": (fixed("GET", "/api/v1/users"), PEOPLE),
    "create_user": (_create_user, ADMINS_CREATE),
    "list_teams": (fixed("GET", "/api/v1/teams"), PEOPLE),
    "create_team": (_create_team, ADMINS_CREATE),
    "list_keys": (fixed("GET", "/api/v1/keys"), PEOPLE),
    "create_key": (_create_key, row(401, 403, 201, 201, 201, 201, 201)),
    # Owned by gw-trust (#9); today any signed-in caller may report call records.
    "ingest_call_records": (_calls, row(401, 202, 202, 202, 202, 202, 202)),
    "list_audit_events": (fixed("GET", "/api/v1/audit/events"), PEOPLE),
    "verify_audit_chain": (fixed("GET", "/api/v1/audit/verify"), PEOPLE),
    "get_active_policy": (fixed("GET", "/api/v1/policies/active"), SIGNED_IN),
    "apply_policy": (policy_call("/api/v1/policies"), ADMINS_CREATE),
    "diff_policy": (policy_call("/api/v1/policies/diff"), ADMINS),
    "evaluate_call": (fixed("POST", "/api/v1/evaluate", json={"tool": "deploy", "server": "infra"}), SIGNED_IN),
    "export_policy": (fixed("GET", "/api/v1/policies/export"), PEOPLE),
    "rollback_policy": (fixed("POST", "/api/v1/policies/rollback", json={"version": 1}), ADMINS_CREATE),
    "validate_policy": (policy_call("/api/v1/policies/validate"), ADMINS),
    "get_policy_version": (fixed("GET", "/api/v1/policies/versions/1"), PEOPLE),
    "list_policy_versions": (fixed("GET", "/api/v1/policies/versions"), PEOPLE),
    "approve_approval": (on_pending("POST", "/approve", json={}), VOTE),
    "decline_approval": (on_pending("POST", "/decline", json={}), VOTE),
    # A batch answers 200 with per-id results; callers who can never vote are refused as a whole.
    "decide_approvals": (_batch, row(401, 403, 403, 200, 200, 200, 200)),
    "cancel_approval": (on_pending("POST", "/cancel", json={}), row(401, 200, 403, 403, 403, 200, 404)),
    "claim_approval": (_claim, RUNNER),
    "list_approvals": (fixed("GET", "/api/v1/approvals"), SIGNED_IN),
    "create_approval": (_create_approval, row(401, 201, 403, 403, 403, 403, 403)),
    "export_approvals": (fixed("GET", "/api/v1/approvals/export"), PEOPLE),
    "get_approval": (on_pending("GET", ""), ONE_REQUEST),
    "get_approval_outcome": (on_pending("GET", "/outcome"), ONE_REQUEST),
    "report_approval_outcome": (_report, RUNNER),
    "wait_for_approvals": (_wait_get, ONE_REQUEST),
    "wait_for_approvals_post": (_wait_post, ONE_REQUEST),
    "list_grants": (fixed("GET", "/api/v1/grants"), PEOPLE),
    "revoke_grant": (_revoke, row(401, 403, 403, 200, 403, 200, 404)),
    "stream_events": (fixed("GET", "/api/v1/events"), PEOPLE),
    # Chat (#13): Slack's callbacks are authenticated by Slack's signature only; keys and sessions count for nothing.
    "slack_interactions": (_slack_click, NOBODY),
    "slack_events": (fixed("POST", "/api/v1/integrations/slack/events", json={"type": "url_verification"}), NOBODY),
    # Mattermost's callback: only a live single-use button token counts (docs/chat.md).
    "mattermost_actions": (
        fixed("POST", "/api/v1/integrations/mattermost/actions", json={"post_id": "p1", "context": {"token": "x"}}),
        NOBODY,
    ),
    "list_approval_comments": (on_pending("GET", "/comments"), row(401, 403, 200, 200, 200, 200, 404)),
    "list_channel_deliveries": (fixed("GET", "/api/v1/channels/email/deliveries"), ADMINS),
}
STREAMING = {"stream_events"}


async def served_operations(client: Any) -> dict[str, tuple[str, str]]:
    document = (await client.get("/schema/openapi.json")).json()
    return {
        op["operationId"]: (method.upper(), path)
        for path, item in document["paths"].items()
        for method, op in item.items()
    }


async def test_every_served_operation_has_a_row(client: Any) -> None:
    served = await served_operations(client)
    missing = sorted(set(served) - set(MATRIX))
    stale = sorted(set(MATRIX) - set(served))
    assert not missing, f"operations without an authorization row in tests/security (and docs/security.md): {missing}"
    assert not stale, f"rows for operations the hub no longer serves: {stale}"


async def test_authorization_matrix(client: Any) -> None:
    cast = await make_cast(client)
    served = await served_operations(client)
    app = client._transport.app
    wrong: list[str] = []
    cells = 0
    for operation, (prepare, expected) in sorted(MATRIX.items()):
        if operation not in served:
            continue
        for who in WHO:
            method, path, kwargs = await prepare(client, cast)
            assert method == served[operation][0], operation
            headers = {**cast.headers[who], **kwargs.pop("headers", {})}
            if operation == "logout":  # must not end the sessions the other cells use
                headers.pop("Cookie", None)
            if operation in STREAMING:
                status = await asgi_status(app, path, headers)
                text = ""
            else:
                response = await client.request(method, path, headers=headers, **kwargs)
                status, text = response.status_code, response.text[:200]
            client.cookies.clear()
            cells += 1
            if status != expected[who]:
                wrong.append(f"{operation} as {who}: expected {expected[who]}, got {status} {text}")
    assert not wrong, f"{len(wrong)} of {cells} cells differ:\n" + "\n".join(wrong)
    assert cells == len(MATRIX) * len(WHO)
