"""Login sessions, users, teams and API keys."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import Cookie

from backend import pagination
from backend.accounts import lifecycle, service, throttle
from backend.accounts.schemas import (
    CreatedKey,
    CreatedTeam,
    CreatedUser,
    InviteAcceptBody,
    InviteAccepted,
    InviteLink,
    KeyBody,
    KeyRevoked,
    KeyView,
    LoggedIn,
    LoginBody,
    LoginUser,
    MemberBody,
    MemberChange,
    PasswordChangeBody,
    TeamBody,
    TeamRenameBody,
    TeamRenamed,
    TeamView,
    UserBody,
    UserState,
    UserView,
)
from backend.accounts.service import Principal
from backend.deps import SESSION_COOKIE, admin_guard, client_address, people_guard, session_cookie, token_attempt
from backend.errors import NotAuthenticated
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
    async def login(self, data: LoginBody, hub: Hub, request: Request) -> Response[LoggedIn]:  # type: ignore[type-arg]
        org = await (service.get_org_by_slug(data.org) if data.org else service.default_org())
        assert hub.redis is not None
        redis, security, address = hub.redis.client, hub.settings.security, client_address(request)
        await throttle.check_login(redis, security, org["id"], data.email, address)
        try:
            token, principal = await service.login(
                org["id"], data.email, data.password, hours=hub.settings.security.session_hours,
                totp_code=data.totp_code,
            )
        except NotAuthenticated:
            await throttle.failed_login(redis, security, org["id"], data.email, address)
            raise
        await throttle.succeeded_login(redis, org["id"], data.email)
        return Response(
            LoggedIn(user=LoginUser(email=principal.email, role=principal.role)),
            cookies=[session_cookie(hub, token)],
        )

    @post("/logout", operation_id="logout", status_code=204, exclude_from_auth=True)
    async def logout(self, request: Request) -> Response[None]:  # type: ignore[type-arg]
        if token := request.cookies.get(SESSION_COOKIE):
            await service.logout(token)
        return Response(None, status_code=204, cookies=[Cookie(key=SESSION_COOKIE, value="", max_age=0)])

    @post("/invite", operation_id="accept_invite", exclude_from_auth=True, status_code=200,
          summary="Set a password from a one-time invite link's token")
    async def accept_invite(self, data: InviteAcceptBody, request: Request) -> InviteAccepted:  # type: ignore[type-arg]
        async with token_attempt(request):
            return InviteAccepted(**await lifecycle.accept_invite(data.token, data.password))


class MeController(Controller):
    path = "/api/v1/me"
    tags = ["accounts"]

    @post("/password", operation_id="change_my_password", status_code=204,
          summary="Change your own password (signed-in session; takes the current one)")
    async def change_password(self, data: PasswordChangeBody, principal: Principal) -> None:
        await lifecycle.change_own_password(principal, data.current_password, data.new_password)


class UserController(Controller):
    guards = [people_guard]
    path = "/api/v1/users"
    tags = ["accounts"]

    @get(operation_id="list_users", summary="The org's users by email; pages by cursor",
         response_headers=pagination.HEADERS)
    async def list_users(
        self, request: Request, principal: Principal,  # type: ignore[type-arg]
        limit: int = pagination.LIMIT, cursor: str | None = pagination.CURSOR,
    ) -> Response[list[UserView]]:
        after = pagination.decode(cursor, 1)[0] if cursor else None
        users = await lifecycle.list_users(principal.org_id, limit=limit, after=after)
        return pagination.page(request, users, limit, list[UserView], "email")  # type: ignore[no-any-return]

    @post(operation_id="create_user", guards=[admin_guard])
    async def create_user(self, data: UserBody, principal: Principal) -> CreatedUser:
        user = await service.add_user(
            principal.org_id, data.email, role=data.role, name=data.name, password=data.password,
            actor=principal.actor,
        )
        for team in data.teams:
            await service.add_member(principal.org_id, team, user["email"], actor=principal.actor)
        return msgspec.convert({**user, "id": str(user["id"])}, CreatedUser)

    @post("/{email:str}/invite", operation_id="invite_user", guards=[admin_guard], status_code=200,
          summary="A one-time link (24 h, single use) for the user to set a password")
    async def invite(self, email: str, principal: Principal, hub: Hub) -> InviteLink:
        token = await lifecycle.create_invite(principal.org_id, email, actor=principal.actor)
        link = f"{hub.settings.server.base_url}/app/#invite={token}"
        return InviteLink(email=email.strip().lower(), link=link, valid_hours=lifecycle.INVITE_HOURS)

    @post("/{email:str}/deactivate", operation_id="deactivate_user", guards=[admin_guard], status_code=200,
          summary="Stop a user at once: sign-in, sessions and keys")
    async def deactivate(self, email: str, principal: Principal) -> UserState:
        return UserState(**await lifecycle.set_active(
            principal.org_id, email, False, actor=principal.actor, by_user=principal.user_id
        ))

    @post("/{email:str}/reactivate", operation_id="reactivate_user", guards=[admin_guard], status_code=200)
    async def reactivate(self, email: str, principal: Principal) -> UserState:
        return UserState(**await lifecycle.set_active(principal.org_id, email, True, actor=principal.actor))


class TeamController(Controller):
    guards = [people_guard]
    path = "/api/v1/teams"
    tags = ["accounts"]

    @get(operation_id="list_teams")
    async def list_teams(self, principal: Principal) -> list[TeamView]:
        members = await service.team_members(principal.org_id)
        return [TeamView(name=name, members=sorted(emails)) for name, emails in sorted(members.items())]

    @post(operation_id="create_team", guards=[admin_guard])
    async def create_team(self, data: TeamBody, principal: Principal) -> CreatedTeam:
        team = await service.add_team(principal.org_id, data.name, actor=principal.actor)
        for email in data.members:
            await service.add_member(principal.org_id, data.name, email, actor=principal.actor)
        return CreatedTeam(id=str(team["id"]), name=team["name"], members=sorted(data.members))

    @patch("/{name:str}", operation_id="rename_team", guards=[admin_guard], summary="Rename a team")
    async def rename(self, name: str, data: TeamRenameBody, principal: Principal) -> TeamRenamed:
        return TeamRenamed(**await lifecycle.rename_team(principal.org_id, name, data.name, actor=principal.actor))

    @delete("/{name:str}", operation_id="delete_team", guards=[admin_guard], status_code=204)
    async def remove(self, name: str, principal: Principal) -> None:
        await lifecycle.delete_team(principal.org_id, name, actor=principal.actor)

    @post("/{name:str}/members", operation_id="add_team_member", guards=[admin_guard], status_code=200)
    async def add_member(self, name: str, data: MemberBody, principal: Principal) -> MemberChange:
        await service.add_member(principal.org_id, name, data.email, actor=principal.actor)
        return MemberChange(team=name, email=data.email.strip().lower(), member=True)

    @delete("/{name:str}/members/{email:str}", operation_id="remove_team_member", guards=[admin_guard],
            status_code=204)
    async def remove_member(self, name: str, email: str, principal: Principal) -> None:
        await lifecycle.remove_member(principal.org_id, name, email, actor=principal.actor)


class KeyController(Controller):
    guards = [people_guard]
    path = "/api/v1/keys"
    tags = ["accounts"]

    @get(operation_id="list_keys", summary="Admins: the org's keys; others: their own; newest first, pages by cursor",
         response_headers=pagination.HEADERS)
    async def list_keys(
        self, request: Request, principal: Principal,  # type: ignore[type-arg]
        limit: int = pagination.LIMIT, cursor: str | None = pagination.CURSOR,
    ) -> Response[list[KeyView]]:
        before = pagination.position(cursor) if cursor else None
        keys = await service.list_keys(principal, limit=limit, before=before)
        return pagination.page(request, keys, limit, list[KeyView], "created_at", "id")  # type: ignore[no-any-return]

    @post(operation_id="create_key", summary="Create an API key; the token is in this response only")
    async def create_key(self, data: KeyBody, principal: Principal) -> CreatedKey:
        token, meta = await service.mint_key(principal, data.name, user=data.user, scope=data.scope, labels=data.labels)
        return msgspec.convert({**meta, "id": str(meta["id"]), "token": token}, CreatedKey)

    @post("/{key_ref:str}/revoke", operation_id="revoke_key", status_code=200,
          summary="Revoke a key (by id or prefix) at once; admins any key of the org, others their own")
    async def revoke(self, key_ref: str, principal: Principal) -> KeyRevoked:
        return KeyRevoked(**await lifecycle.revoke_key_for(principal, key_ref))
