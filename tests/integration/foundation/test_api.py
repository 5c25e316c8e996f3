"""The API skeleton: health, OpenAPI, bearer keys, session cookies, stable JSON errors."""

from __future__ import annotations

from typing import Any

from backend.accounts.tables import ApiKey
from tests.helpers import auth, make_org


async def test_health_reports_database_and_redis(client: Any) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["database"]["kind"] in {"sqlite", "postgresql"}
    assert body["redis"] == {"ok": True, "embedded": False}


async def test_health_is_503_and_names_the_error_when_redis_is_down(client: Any, monkeypatch: Any) -> None:
    async def refuse() -> None:
        raise ConnectionError("Redis refused the connection\nsecond line")

    monkeypatch.setattr(client.hub.redis.client, "ping", refuse)
    response = await client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is True
    assert body["redis"] == {"ok": False, "error": "Redis refused the connection"}
    assert "worker" not in body  # only reported when Redis answers


async def test_openapi_schema_lists_operations(client: Any) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    operation_ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"health", "whoami", "create_key", "apply_policy", "evaluate_call", "verify_audit_chain"} <= operation_ids
    assert (await client.get("/schema")).status_code == 200


async def test_bearer_key_identifies_the_agent(client: Any) -> None:
    org = await make_org()
    me = (await client.get("/api/v1/me", headers=auth(org.agent_token))).json()
    assert me["user"]["email"] == "dev@acme.test"
    assert me["key"]["name"] == "ci-bot"
    assert me["key"]["scope"] == "agent"
    assert me["key"]["labels"] == {"team": "web"}


async def test_errors_have_one_stable_shape(client: Any) -> None:
    for headers, status, code in [
        ({}, 401, "not_authenticated"),
        ({"Authorization": "Bearer pl_nope_nope"}, 401, "not_authenticated"),
        ({"Authorization": "Basic abc"}, 401, "not_authenticated"),
    ]:
        response = await client.get("/api/v1/me", headers=headers)
        assert response.status_code == status
        error = response.json()["error"]
        assert error["code"] == code and error["status"] == status and error["message"]
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_session_login_then_cookie_auth(client: Any) -> None:
    await make_org()
    bad = await client.post("/api/v1/auth/login", json={"email": "alice@acme.test", "password": "wrong"})
    assert bad.status_code == 401
    good = await client.post("/api/v1/auth/login", json={"email": "alice@acme.test", "password": "pw-alice"})
    assert good.status_code == 201
    assert "preloop_session" in good.cookies
    me = (await client.get("/api/v1/me")).json()
    assert me == {**me, "via": "session", "key": None}
    assert me["user"]["email"] == "alice@acme.test"
    # A cookie-authenticated POST must come from the hub's own pages (docs/security.md).
    assert (await client.post("/api/v1/auth/logout")).json()["error"]["code"] == "csrf_failed"
    assert (await client.post("/api/v1/auth/logout", headers={"Origin": "http://hub.test"})).status_code == 204
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_users_bad_input_and_admin_only(client: Any) -> None:
    org = await make_org()
    admin = auth(org.admin_token)
    created = await client.post("/api/v1/users", json={"email": "dan@acme.test", "role": "viewer"}, headers=admin)
    assert created.status_code == 201
    dup = await client.post("/api/v1/users", json={"email": "DAN@acme.test"}, headers=admin)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_user"
    role = await client.post("/api/v1/users", json={"email": "eve@acme.test", "role": "root"}, headers=admin)
    assert role.status_code == 422
    assert "admin, approver, viewer" in role.json()["error"]["detail"]["hint"]
    unknown_field = await client.post("/api/v1/users", json={"email": "x@acme.test", "rol": "admin"}, headers=admin)
    assert unknown_field.status_code == 400
    not_admin = await client.post("/api/v1/users", json={"email": "f@acme.test"}, headers=auth(org.agent_token))
    assert not_admin.status_code == 403


async def test_keys_are_shown_once_and_stored_hashed(client: Any) -> None:
    org = await make_org()
    response = await client.post("/api/v1/keys", json={"name": "deploy-bot"}, headers=auth(org.admin_token))
    assert response.status_code == 201
    token = response.json()["token"]
    assert token.startswith("pl_")
    rows = await ApiKey.select(ApiKey.token_hash).where(ApiKey.name == "deploy-bot")
    assert len(rows) == 1 and token not in rows[0]["token_hash"] and len(rows[0]["token_hash"]) == 64
    listed = (await client.get("/api/v1/keys", headers=auth(org.admin_token))).json()
    assert all("token" not in key for key in listed)
    agent_mints = await client.post("/api/v1/keys", json={"name": "x"}, headers=auth(org.agent_token))
    assert agent_mints.status_code == 403


async def test_orgs_never_see_each_other(client: Any) -> None:
    acme = await make_org("acme")
    globex = await make_org("globex")
    users = (await client.get("/api/v1/users", headers=auth(globex.admin_token))).json()
    assert {u["email"].split("@")[1] for u in users} == {"globex.test"}
    teams = (await client.get("/api/v1/teams", headers=auth(acme.admin_token))).json()
    assert teams == [{"name": "sre", "members": ["alice@acme.test", "bob@acme.test"]}]


async def test_the_approver_app_is_hosted(client: Any) -> None:
    home = await client.get("/")
    assert home.status_code in {301, 302, 307, 308} and home.headers["location"] == "/app/"
    page = await client.get("/app/")
    assert page.status_code == 200 and '<link rel="manifest" href="/app/manifest.webmanifest">' in page.text
    manifest = (await client.get("/app/manifest.webmanifest")).json()
    assert manifest["start_url"] == "/app/" and manifest["display"] == "standalone"
    for asset in ("/app/app.js", "/app/sw.js", "/app/style.css", "/app/icon.svg"):
        assert (await client.get(asset)).status_code == 200, asset
