"""Login sessions, users, teams and API keys."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie

from backend.accounts import service, throttle
from backend.accounts.schemas import KeyBody, LoginBody, TeamBody, UserBody
from backend.accounts.service import Principal
from backend.accounts.tables import ApiKey, User
from backend.deps import SESSION_COOKIE, admin_guard, client_address, people_guard
from backend.errors import Forbidden, NotAuthenticated
from backend.hub import Hub
from backend.request_checks import BODY_LIMIT_SMALL


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post(
        "/login", operation_id="login", exclude_from_auth=True, request_max_body_size=BODY_LIMIT_SMALL,
        opt={"ignores_session": True},
        summary="Start a console/PWA session",
    )
    async def login(self, data: LoginBody, hub: Hub, request: Request) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
        org = await (service.get_org_by_slug(data.org) if data.org else service.default_org())
        assert hub.redis is not None
        redis, security, address = hub.redis.client, hub.settings.security, client_address(request)
        await throttle.check_login(redis, security, org["id"], data.email, address)
        try:
            token, principal = await service.login(
                org["id"], data.email, data.password, hours=hub.settings.security.session_hours
            )
        except NotAuthenticated:
            await throttle.failed_login(redis, security, org["id"], data.email, address)
            raise
        await throttle.succeeded_login(redis, org["id"], data.email)
        return Response(
            {"user": {"email": principal.email, "role": principal.role}},
            cookies=[
                Cookie(
                    key=SESSION_COOKIE, value=token, httponly=True, samesite="lax",
                    secure=hub.settings.server.base_url.startswith("https"),
                    max_age=hub.settings.security.session_hours * 3600,
                )
            ],
        )

    @post("/logout", operation_id="logout", status_code=204, exclude_from_auth=True)
    async def logout(self, request: Request) -> Response[None]:  # type: ignore[type-arg]
        if token := request.cookies.get(SESSION_COOKIE):
            await service.logout(token)
        return Response(None, status_code=204, cookies=[Cookie(key=SESSION_COOKIE, value="", max_age=0)])


class UserController(Controller):
    guards = [people_guard]
    path = "/api/v1/users"
    tags = ["accounts"]

    @get(operation_id="list_users")
    async def list_users(self, principal: Principal) -> list[dict[str, Any]]:
        rows = await User.select(User.id, User.email, User.name, User.role, User.is_active).where(
            User.org == principal.org_id
        ).order_by(User.email)
        return [{**row, "id": str(row["id"])} for row in rows]

    @post(operation_id="create_user", guards=[admin_guard])
    async def create_user(self, data: UserBody, principal: Principal) -> dict[str, Any]:
        user = await service.add_user(
            principal.org_id, data.email, role=data.role, name=data.name, password=data.password,
            actor=principal.actor,
        )
        for team in data.teams:
            await service.add_member(principal.org_id, team, user["email"], actor=principal.actor)
        return {**user, "id": str(user["id"])}


class TeamController(Controller):
    guards = [people_guard]
    path = "/api/v1/teams"
    tags = ["accounts"]

    @get(operation_id="list_teams")
    async def list_teams(self, principal: Principal) -> list[dict[str, Any]]:
        members = await service.team_members(principal.org_id)
        return [{"name": name, "members": sorted(emails)} for name, emails in sorted(members.items())]

    @post(operation_id="create_team", guards=[admin_guard])
    async def create_team(self, data: TeamBody, principal: Principal) -> dict[str, Any]:
        team = await service.add_team(principal.org_id, data.name, actor=principal.actor)
        for email in data.members:
            await service.add_member(principal.org_id, data.name, email, actor=principal.actor)
        return {"id": str(team["id"]), "name": team["name"], "members": sorted(data.members)}


class KeyController(Controller):
    guards = [people_guard]
    path = "/api/v1/keys"
    tags = ["accounts"]

    @get(operation_id="list_keys")
    async def list_keys(self, principal: Principal) -> list[dict[str, Any]]:
        query = ApiKey.select(
            ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.scope, ApiKey.created_at, ApiKey.revoked_at,
            ApiKey.user.email,
        ).where(ApiKey.org == principal.org_id)
        if not principal.is_admin:
            query = query.where(ApiKey.user == principal.user_id)
        return [{**row, "id": str(row["id"])} for row in await query]

    @post(operation_id="create_key", summary="Create an API key; the token is in this response only")
    async def create_key(self, data: KeyBody, principal: Principal) -> dict[str, Any]:
        user_id = principal.user_id
        if data.user and data.user.lower() != principal.email:
            if not principal.is_admin:
                raise Forbidden("only admins create keys for other users")
            user_id = (await service.get_user(principal.org_id, data.user))["id"]
        if principal.via == "key" and not principal.is_admin:
            raise Forbidden("an agent key cannot mint keys; log in or use an admin key")
        token, meta = await service.create_key(
            principal.org_id, user_id, data.name, scope=data.scope, labels=data.labels, actor=principal.actor
        )
        return {**meta, "id": str(meta["id"]), "token": token}
