"""Nothing one caller sends may stall the hub or answer 500: depth, NUL, lengths, sizes, bidi, policy
bombs, media types. Each case names the field in its 400. SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

from tests.helpers import auth, make_org
from tests.integration.approvals.support import POLICY, apply_policy


def _field_named(response: Any, field: str) -> None:
    error = response.json()["error"]
    assert field in str(error["detail"]) or field in error["message"], error


async def test_deep_json_is_a_400_not_a_500(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    deep = "[" * 1000 + "]" * 1000
    login = await client.post("/api/v1/auth/login", content=deep, headers={"content-type": "application/json"})
    assert login.status_code == 400, login.text
    assert login.json()["error"]["code"] == "too_deep"
    nested = '{"tool": "deploy", "server": "infra", "arguments": ' + '{"a": ' * 200 + "1" + "}" * 200 + "}"
    create = await client.post(
        "/api/v1/approvals", content=nested, headers={"content-type": "application/json", **auth(org.agent_token)}
    )
    assert create.status_code == 400, create.text
    # Brackets inside strings are text, not nesting.
    fine = await client.post(
        "/api/v1/approvals", json={"tool": "deploy", "server": "infra", "arguments": {"sql": "[" * 500}},
        headers=auth(org.agent_token),
    )
    assert fine.status_code == 201, fine.text


async def test_nul_anywhere_is_a_400_naming_the_field(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    agent = auth(org.agent_token)
    login = await client.post("/api/v1/auth/login", json={"email": "admin@acme.test\u0000", "password": "x"})
    assert login.status_code == 400, login.text
    assert login.json()["error"] == {
        "code": "nul_character",
        "message": "field 'email' contains a NUL character (\\u0000); remove it",
        "detail": {"field": "email", "hint": "text may not contain \\u0000"},
        "status": 400,
    }
    cases = [
        ({"tool": "dep\u0000loy"}, "tool"),
        ({"tool": "deploy", "server": "infra", "arguments": {"cmd": ["ok", "rm\u0000"]}}, "arguments.cmd[1]"),
        ({"tool": "deploy", "server": "infra", "arguments": {"k\u0000": 1}}, "arguments.k\\u0000"),
        ({"tool": "deploy", "server": "infra", "justification": "because\u0000"}, "justification"),
    ]
    for body, field in cases:
        response = await client.post("/api/v1/approvals", json=body, headers=agent)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["detail"]["field"] == field
    records = {"records": [{"event_id": "e1", "tool": "read\u0000logs", "decision": "allow"}]}
    calls = await client.post("/api/v1/audit/calls", json=records, headers=agent)
    # Call records are answered one by one (the gateway dead-letters a refused record, keeps the rest).
    assert calls.status_code == 200, calls.text
    (answer,) = calls.json()["results"]
    assert answer["status"] == "rejected" and "NUL" in answer["error"] and "tool" in answer["error"]
    query = await client.get("/api/v1/approvals", params={"tool": "a\u0000b"}, headers=auth(org.admin_token))
    assert query.status_code == 400
    assert query.json()["error"]["detail"]["field"] == "tool"


async def test_lengths_past_the_column_are_a_400_naming_the_field(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    admin = auth(org.admin_token)
    cases = [
        ("/api/v1/keys", {"name": "k" * 321, "scope": "agent"}, admin, "name"),
        ("/api/v1/users", {"email": "a" * 320 + "@acme.test"}, admin, "email"),
        ("/api/v1/approvals", {"tool": "t" * 301}, auth(org.agent_token), "tool"),
        ("/api/v1/approvals", {"tool": "deploy", "justification": "j" * 4001}, auth(org.agent_token), "justification"),
        ("/api/v1/auth/login", {"email": "a@acme.test", "password": "p" * 1025}, {}, "password"),
    ]
    for path, body, headers, field in cases:
        response = await client.post(path, json=body, headers=headers)
        assert response.status_code == 400, (path, response.text)
        _field_named(response, field)
    # The key that could not be created does not exist, and the org's keys still work.
    assert (await client.get("/api/v1/me", headers=auth(org.agent_token))).status_code == 200


async def test_body_size_limits_per_endpoint(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    big_call = {"tool": "deploy", "server": "infra", "arguments": {"blob": "x" * 300_000}}
    response = await client.post("/api/v1/approvals", json=big_call, headers=auth(org.agent_token))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"
    login = await client.post("/api/v1/auth/login", json={"email": "a@b.c", "password": "p" * 20_000})
    assert login.status_code == 413
    policy = await client.post(
        "/api/v1/policies/validate", json={"source": "#" * 600_000}, headers=auth(org.admin_token)
    )
    assert policy.status_code == 413
    # Under the limits, the same endpoints answer normally.
    ok = {"tool": "deploy", "server": "infra", "arguments": {"blob": "x" * 100_000}}
    assert (await client.post("/api/v1/approvals", json=ok, headers=auth(org.agent_token))).status_code == 201


async def test_bidi_controls_in_tool_names_are_refused(client: Any, org: Any) -> None:
    await apply_policy(client, org)
    response = await client.post(
        "/api/v1/approvals", json={"tool": "deploy\u202egnp.exe", "server": "infra"}, headers=auth(org.agent_token)
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["detail"]["field"], error["detail"]["position"]) == ("bidi_control", "tool", 6)


BOMB = """version: "1"
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
"""


async def test_policy_alias_bombs_and_oversized_policies_are_refused_quickly(client: Any, org: Any) -> None:
    admin = auth(org.admin_token)
    started = time.monotonic()
    bomb = await client.post("/api/v1/policies/validate", json={"source": BOMB}, headers=admin)
    elapsed = time.monotonic() - started
    assert bomb.status_code == 422, bomb.text
    assert bomb.json()["error"]["code"] == "too_many_aliases"
    many = 'version: "1"\n' + "".join(f"x{i}: &x{i} 1\n" for i in range(70))
    refused = await client.post("/api/v1/policies/validate", json={"source": many}, headers=admin)
    assert refused.json()["error"]["code"] == "too_many_aliases"
    huge = await client.post("/api/v1/policies/validate", json={"source": "#" * 300_000}, headers=admin)
    assert huge.status_code == 400
    _field_named(huge, "source")
    # A policy that reuses a block through an anchor is fine.
    reuse = POLICY.replace("channels: [web, email]", "channels: &ch [web, email]", 1)
    reuse = reuse.replace("require_decline_reason: true", "channels: *ch\n    require_decline_reason: true")
    assert (await client.post("/api/v1/policies/validate", json={"source": reuse}, headers=admin)).status_code == 200
    print(f"alias bomb refused in {elapsed * 1000:.0f} ms")


async def test_json_endpoints_refuse_forms_and_plain_text(client: Any, hub: Any) -> None:
    org = await make_org()
    form = await client.post("/api/v1/auth/login", data={"email": "admin@acme.test", "password": "admin-password"})
    assert form.status_code == 415
    assert form.json()["error"]["code"] == "unsupported_media_type"
    plain = await client.post(
        "/api/v1/users", content='{"email": "evil@acme.test", "role": "admin"}',
        headers={"content-type": "text/plain", **auth(org.admin_token)},
    )
    assert plain.status_code == 415
    users = (await client.get("/api/v1/users", headers=auth(org.admin_token))).json()
    assert "evil@acme.test" not in [u["email"] for u in users]


async def test_new_text_bodies_refuse_nul_overlong_and_deep_json_naming_the_field(client: Any, org: Any) -> None:
    """Invite, password, team, passkey name, channel settings, preferences and push subscriptions."""
    from tests.security.support import ORIGIN

    login = await client.post("/api/v1/auth/login", json={"email": "alice@acme.test", "password": "pw-alice"})
    session = {"Cookie": f"preloop_session={login.cookies['preloop_session']}", "Origin": ORIGIN}
    client.cookies.clear()
    admin = auth(org.admin_token)
    long = "x" * 5000
    sub_keys = {"p256dh": "BNcR", "auth": "tBHI"}
    sub = {"endpoint": "https://p.test/e", "keys": sub_keys}
    cases: list[tuple[str, str, dict[str, str], dict[str, Any], str]] = [
        ("POST", "/api/v1/auth/invite", {}, {"token": "t", "password": "p"}, "token"),
        ("POST", "/api/v1/auth/invite", {}, {"token": "t", "password": "p"}, "password"),
        ("POST", "/api/v1/me/password", session, {"current_password": "pw-alice", "new_password": "p"}, "new_password"),
        ("POST", "/api/v1/teams", admin, {"name": "t"}, "name"),
        ("PATCH", "/api/v1/teams/sre", admin, {"name": "t"}, "name"),
        ("POST", "/api/v1/teams/sre/members", admin, {"email": "e@acme.test"}, "email"),
        ("PATCH", "/api/v1/webauthn/credentials/00000000-0000-0000-0000-000000000000", session, {"name": "n"}, "name"),
        ("PUT", "/api/v1/channels/webhook", admin, {"url": "https://h.test/", "secret": "s" * 32}, "url"),
        ("PUT", "/api/v1/channels/webhook", admin, {"url": "https://h.test/", "secret": "s" * 32}, "secret"),
        ("PUT", "/api/v1/channels/email", admin, {"smtp_url": "smtp://h.test:25", "from": "a@h.test"}, "from"),
        ("PUT", "/api/v1/me/notifications", session, {"timezone": "UTC"}, "timezone"),
        ("PUT", "/api/v1/me/notifications", session, {"channels": ["email"]}, "channels[0]"),
        ("POST", "/api/v1/push/subscriptions", session, sub, "endpoint"),
        ("POST", "/api/v1/push/subscriptions", session, sub, "keys.auth"),
        ("DELETE", "/api/v1/push/subscriptions", session, {"endpoint": "https://p.test/e"}, "endpoint"),
    ]
    wrong: list[str] = []
    for method, path, headers, body, field in cases:
        for label, value in (("nul", "a\u0000b"), ("long", long)):
            sent = _with(body, field, value)
            response = await client.request(method, path, json=sent, headers=headers)
            named = response.status_code < 500 and field.rpartition(".")[2].split("[")[0] in response.text
            if response.status_code != 400 or not named:
                wrong.append(f"{method} {path} {field} {label}: {response.status_code} {response.text[:160]}")
        deep = '{"x": ' + "[" * 100 + "]" * 100 + "}"
        response = await client.request(
            method, path, content=deep, headers={**headers, "content-type": "application/json"}
        )
        if response.status_code != 400:
            wrong.append(f"{method} {path} deep: {response.status_code} {response.text[:160]}")
    assert not wrong, "\n".join(wrong)


def _with(body: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    """A copy of `body` with `field` (dotted, `name[0]` for a list item) set to `value`."""
    import copy

    out = copy.deepcopy(body)
    target: Any = out
    parts = field.split(".")
    for part in parts[:-1]:
        target = target[part]
    last = parts[-1]
    if last.endswith("]"):
        name, index = last[:-1].split("[")
        target[name][int(index)] = value
    else:
        target[last] = value
    return out
