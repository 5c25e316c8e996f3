"""Every operation of the served OpenAPI document, times every kind of caller → the expected status.

The table below is docs/security.md in code. A new operation without a row fails
`test_every_served_operation_has_a_row`, so nobody adds an endpoint without deciding who may call it.
Each cell gets fresh objects (a new pending request to vote on, a new grant to revoke), so cells do
not depend on each other. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from backend.accounts import service as accounts
from tests.helpers import auth
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


def _chat_link(suffix: str) -> Prepare:
    """A fresh one-time link token offered to a chat user of the cast's organization."""

    async def prepare(client: Any, cast: Cast) -> Call:
        from backend.notifications import chat_links

        url = await chat_links.offer(client.hub, cast.org.id, "slack", "T0ACME", cast.unique("U"))
        return "POST", f"/api/v1/me/chat-links{suffix}", {"json": {"token": url.rpartition("token=")[2]}}

    return prepare


async def _alices_chat_link(_client: Any, cast: Cast) -> Call:
    """A chat account linked by alice (the approver): only she may unlink it."""
    import uuid
    from datetime import UTC, datetime

    from backend.notifications.chat_tables import ChatLink

    alice = await accounts.get_user(cast.org.id, "alice@acme.test")
    chat_user = cast.unique("U")
    account = f"{cast.org.id}:slack:T0ACME:{chat_user}"
    link = ChatLink(id=uuid.uuid4(), org=cast.org.id, user=alice["id"], kind="slack", team="T0ACME",
                    chat_user=chat_user, account=account, created_at=datetime.now(UTC))
    await ChatLink.insert(link)
    return "DELETE", f"/api/v1/me/chat-links/{link.id}", {}


async def _logout(_client: Any, _cast: Cast) -> Call:
    return "POST", "/api/v1/auth/logout", {}


def policy_call(path: str) -> Prepare:
    async def prepare(_client: Any, cast: Cast) -> Call:
        source = POLICY.format(slug="acme") + f"# {cast.unique('v')}\n"  # a new version each time
        return "POST", path, {"json": {"source": source}}

    return prepare


async def _fresh_user(cast: Cast) -> str:
    user = await accounts.add_user(cast.org.id, f"{cast.unique('p')}@acme.test", role="viewer")
    return str(user["email"])


async def _fresh_team(cast: Cast, *, member: str | None = None) -> str:
    name = cast.unique("t")
    await accounts.add_team(cast.org.id, name)
    if member:
        await accounts.add_member(cast.org.id, name, member)
    return name


def on_user(method: str, suffix: str) -> Prepare:
    async def prepare(_client: Any, cast: Cast) -> Call:
        return method, f"/api/v1/users/{await _fresh_user(cast)}{suffix}", {"json": {}} if method == "POST" else {}

    return prepare


async def _accept_invite(client: Any, cast: Cast) -> Call:
    email = await _fresh_user(cast)
    link = await client.post(f"/api/v1/users/{email}/invite", json={}, headers=auth(cast.org.admin_token))
    assert link.status_code == 200, link.text
    token = link.json()["link"].rpartition("#invite=")[2]
    return "POST", "/api/v1/auth/invite", {"json": {"token": token, "password": "a-long-new-password"}}


async def _rename_team(_client: Any, cast: Cast) -> Call:
    return "PATCH", f"/api/v1/teams/{await _fresh_team(cast)}", {"json": {"name": cast.unique("renamed")}}


async def _delete_team(_client: Any, cast: Cast) -> Call:
    return "DELETE", f"/api/v1/teams/{await _fresh_team(cast)}", {}


async def _add_member(_client: Any, cast: Cast) -> Call:
    return "POST", f"/api/v1/teams/{await _fresh_team(cast)}/members", {"json": {"email": "ian@acme.test"}}


async def _remove_member(_client: Any, cast: Cast) -> Call:
    team = await _fresh_team(cast, member="ian@acme.test")
    return "DELETE", f"/api/v1/teams/{team}/members/ian@acme.test", {}


async def _revoke_key(_client: Any, cast: Cast) -> Call:
    """A key of alice (the approver): she and admins may revoke it; other people do not see it (404)."""
    alice = await accounts.get_user(cast.org.id, "alice@acme.test")
    _token, meta = await accounts.create_key(cast.org.id, alice["id"], cast.unique("k"), scope="agent")
    return "POST", f"/api/v1/keys/{meta['id']}/revoke", {"json": {}}


async def _batch_step_up(client: Any, cast: Cast) -> Call:
    request = await pending(client, cast)
    return "POST", "/api/v1/approvals/batch/step-up/options", {"json": {"ids": [request["id"]], "decision": "approve"}}


async def _subscribe(_client: Any, cast: Cast) -> Call:
    keys = {"p256dh": PUSH_P256DH, "auth": PUSH_AUTH}
    body = {"endpoint": f"https://push.example.test/{cast.unique('s')}", "keys": keys}
    return "POST", "/api/v1/push/subscriptions", {"json": body}


async def _unsubscribe(_client: Any, cast: Cast) -> Call:
    return "DELETE", "/api/v1/push/subscriptions", {"json": {"endpoint": f"https://push.example.test/{cast.unique('s')}"}}


# A P-256 public key and auth secret in the shape browsers send (values only need to parse).
PUSH_P256DH = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
PUSH_AUTH = "tBHItJI5svbpez7KI4CCXg"
WEBHOOK = {"enabled": False, "url": "https://hooks.example.test/p", "secret": "a-webhook-secret-of-32-chars-xx"}
NO_PASSKEY = "00000000-0000-0000-0000-000000000000"
# Session-only actions on your own account: API keys are refused (403), every signed-in person may.
OWN_SESSION = row(401, 403, 200, 200, 200, 200, 200)
NO_TOTP = row(401, 403, 422, 422, 422, 422, 422)  # TOTP not started: 422 past authorization
STEP_UP = row(401, 403, 403, 422, 422, 422, 404)

PHASE2: dict[str, tuple[Prepare, dict[str, int]]] = {
    # system
    "ready": (fixed("GET", "/ready"), EVERYONE),
    "metrics": (fixed("GET", "/metrics"), EVERYONE),  # PRELOOP_METRICS_TOKEN unset; see test_web
    # accounts lifecycle (#11): the invite token is the credential, so anyone holding one may use it
    "accept_invite": (_accept_invite, row(200, 200, 200, 200, 200, 200, 200)),
    # a too-short new password: 422 means the caller got past authorization without changing anything
    "change_my_password": (
        fixed("POST", "/api/v1/me/password", json={"current_password": "x", "new_password": "x"}),
        row(401, 403, 422, 422, 422, 422, 422),
    ),
    "invite_user": (on_user("POST", "/invite"), row(401, 403, 403, 403, 403, 200, 404)),
    "deactivate_user": (on_user("POST", "/deactivate"), row(401, 403, 403, 403, 403, 200, 404)),
    "reactivate_user": (on_user("POST", "/reactivate"), row(401, 403, 403, 403, 403, 200, 404)),
    "rename_team": (_rename_team, row(401, 403, 403, 403, 403, 200, 404)),
    "delete_team": (_delete_team, row(401, 403, 403, 403, 403, 204, 404)),
    "add_team_member": (_add_member, row(401, 403, 403, 403, 403, 200, 404)),
    "remove_team_member": (_remove_member, row(401, 403, 403, 403, 403, 204, 404)),
    "revoke_key": (_revoke_key, row(401, 403, 404, 200, 404, 200, 404)),
    # gateway (#9)
    "check_agent_key": (fixed("GET", "/api/v1/agents/me"), row(401, 200, 403, 403, 403, 403, 403)),
    # audit
    "export_audit": (fixed("GET", "/api/v1/audit/export"), ADMINS),
    # policies read back in the seed's shapes, like the active policy
    "list_tool_configurations": (fixed("GET", "/api/v1/tools"), SIGNED_IN),
    "list_approval_policies": (fixed("GET", "/api/v1/approval-policies"), SIGNED_IN),
    # autonomy and dry run (#15): every agent's recorded calls, so people only
    "get_autonomy": (fixed("GET", "/api/v1/autonomy"), PEOPLE),
    "dry_run_policy": (policy_call("/api/v1/policies/dry-run"), PEOPLE),
    # passkeys and TOTP (#14): your own account, from a session
    "passkey_register_options": (fixed("POST", "/api/v1/webauthn/register/options", json={}), OWN_SESSION),
    # a malformed credential: 422 past authorization
    "passkey_register_verify": (
        fixed("POST", "/api/v1/webauthn/register/verify", json={"credential": {"id": "x"}, "name": "k"}),
        row(401, 403, 422, 422, 422, 422, 422),
    ),
    "passkey_sign_in_options": (fixed("POST", "/api/v1/webauthn/authenticate/options", json={}), EVERYONE),
    "passkey_sign_in": (
        fixed("POST", "/api/v1/webauthn/authenticate/verify", json={"credential": {"id": "x"}}),
        row(422, 422, 422, 422, 422, 422, 422),
    ),
    "list_passkeys": (fixed("GET", "/api/v1/webauthn/credentials"), PEOPLE),
    "rename_passkey": (
        fixed("PATCH", f"/api/v1/webauthn/credentials/{NO_PASSKEY}", json={"name": "n"}),
        row(401, 403, 404, 404, 404, 404, 404),
    ),
    "remove_passkey": (
        fixed("DELETE", f"/api/v1/webauthn/credentials/{NO_PASSKEY}"), row(401, 403, 404, 404, 404, 404, 404)
    ),
    "totp_status": (fixed("GET", "/api/v1/totp"), PEOPLE),
    "totp_enrol": (fixed("POST", "/api/v1/totp/enrol", json={}), OWN_SESSION),
    "totp_confirm": (fixed("POST", "/api/v1/totp/confirm", json={"code": "000000"}), NO_TOTP),
    "totp_disable": (fixed("POST", "/api/v1/totp/disable", json={"code": "000000"}), NO_TOTP),
    # step-up challenges are for people who vote, from a session; nobody in the cast has a passkey,
    # so 422 no_passkey is the answer past authorization (viewers are refused first)
    "step_up_options": (on_pending("POST", "/step-up/options", json={"decision": "approve"}), STEP_UP),
    "batch_step_up_options": (_batch_step_up, STEP_UP),
    # notifications (#12)
    "list_deliveries": (on_pending("GET", "/deliveries"), row(401, 403, 200, 200, 200, 200, 404)),
    "list_channels": (fixed("GET", "/api/v1/channels"), ADMINS),
    "put_channel": (fixed("PUT", "/api/v1/channels/webhook", json=WEBHOOK), ADMINS),
    "test_channel": (fixed("POST", "/api/v1/channels/nosuch/test", json={}), row(401, 403, 403, 403, 403, 404, 404)),
    "get_my_notifications": (fixed("GET", "/api/v1/me/notifications"), PEOPLE),
    "put_my_notifications": (fixed("PUT", "/api/v1/me/notifications", json={"timezone": "UTC"}), PEOPLE),
    "get_vapid_public_key": (fixed("GET", "/api/v1/push/vapid-public-key"), EVERYONE),  # a public key,
    "add_push_subscription": (_subscribe, row(401, 403, 201, 201, 201, 201, 201)),
    "remove_push_subscription": (_unsubscribe, row(401, 403, 404, 404, 404, 404, 404)),  # not theirs,
}

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
    # Only agent keys report calls (the agent is stamped from the key); 200 with a result per record.
    "ingest_call_records": (_calls, row(401, 200, 403, 403, 403, 403, 403)),
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
    # The decline-reason dialog's submission: only a live single-use dialog token counts.
    "mattermost_dialogs": (
        fixed("POST", "/api/v1/integrations/mattermost/dialogs", json={"callback_id": "preloop_decline", "state": "x"}),
        NOBODY,
    ),
    # Chat accounts linked in the app: a signed-in session of the link's organization (another org: 404).
    "list_my_chat_links": (fixed("GET", "/api/v1/me/chat-links"), PEOPLE),
    "preview_chat_link": (_chat_link("/preview"), row(401, 403, 200, 200, 200, 200, 404)),
    "link_chat_account": (_chat_link(""), row(401, 403, 201, 201, 201, 201, 404)),
    "unlink_chat_account": (_alices_chat_link, row(401, 403, 404, 204, 404, 404, 404)),
    "list_approval_comments": (on_pending("GET", "/comments"), row(401, 403, 200, 200, 200, 200, 404)),
    # Writing in the discussion: people who may decide (named on the request or not); viewers and agents never.
    "add_approval_comment": (on_pending("POST", "/comments", json={"text": "context"}),
                             row(401, 403, 403, 201, 201, 201, 404)),
    "list_channel_deliveries": (fixed("GET", "/api/v1/channels/email/deliveries"), ADMINS),
    # --- phase 2 rows (matrix branch): operations merged after the table above was written ---
    **PHASE2,
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
