"""Console pages for people, teams and channels: forms over the accounts and notifications services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Template

from backend.accounts import lifecycle
from backend.accounts import service as accounts
from backend.accounts.service import Principal
from backend.accounts.tables import ROLES
from backend.console import session
from backend.console.controllers import _form, _not_signed_in, _page, writer_guard
from backend.deps import admin_guard
from backend.errors import NotAuthenticated, PreloopError
from backend.hub import Hub
from backend.notifications import channel_settings
from backend.notifications import service as notifications
from backend.policy_store import service as policies

ADMIN_WRITE = [writer_guard, admin_guard]
#: Form fields that are secrets: never shown back, and an empty field keeps the stored value.
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("smtp_url",),
    "webhook": ("secret",),
    "slack": ("bot_token", "signing_secret"),
    "mattermost": ("token",),
}
CHANNEL_FIELDS = {
    "email": ("smtp_url", "from"),
    "push": ("subject",),
    "webhook": ("url", "secret"),
    "slack": ("bot_token", "signing_secret", "channel"),
    "mattermost": ("url", "token", "channel"),
}


def _answer(page: Template, error: str | None) -> Template:
    page.status_code = 200 if error is None else 422
    page.headers["Cache-Control"] = "no-store"  # an invite link or a test answer is shown once
    return page


class ConsoleDirectoryController(Controller):
    """People, teams and channels; viewers see them, only admins change them (the server refuses)."""

    opt = {"form_body": True}  # HTML forms (see backend/request_checks.py)
    path = "/console"
    include_in_schema = False
    guards = [session.session_guard]
    exception_handlers = {NotAuthenticated: _not_signed_in}

    # --- people --------------------------------------------------------------------------------

    async def _people(self, request: Request[Any, Any, Any], principal: Principal, *, message: str | None = None,
                      error: str | None = None, invite: dict[str, Any] | None = None) -> Template:
        page = _page(request, "people.html", people=await lifecycle.list_people(principal.org_id),
                     rights=await policies.voting_rights(principal.org_id), roles=ROLES, message=message,
                     error=error, invite=invite)
        return _answer(page, error)

    @get("/people", operation_id="console_people")
    async def people(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        return await self._people(request, principal)

    @post("/people", operation_id="console_person_add", guards=ADMIN_WRITE)
    async def add_person(self, request: Request, principal: Principal, hub: Hub) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        try:
            user = await accounts.add_user(principal.org_id, form.get("email", ""), role=form.get("role", "approver"),
                                           name=form.get("name", "").strip(), actor=principal.actor)
            token = await lifecycle.create_invite(principal.org_id, user["email"], actor=principal.actor)
        except PreloopError as exc:
            return await self._people(request, principal, error=exc.message)
        return await self._people(request, principal, message=f"Added {user['email']} as {user['role']}.",
                                  invite=self._invite(hub, user["email"], token))

    @staticmethod
    def _invite(hub: Hub, email: str, token: str) -> dict[str, Any]:
        return {"email": email, "link": f"{hub.settings.server.base_url}/app/#invite={token}",
                "hours": lifecycle.INVITE_HOURS}

    @post("/people/invite", operation_id="console_person_invite", guards=ADMIN_WRITE)
    async def invite(self, request: Request, principal: Principal, hub: Hub) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        try:
            token = await lifecycle.create_invite(principal.org_id, form.get("email", ""), actor=principal.actor)
        except PreloopError as exc:
            return await self._people(request, principal, error=exc.message)
        email = form.get("email", "").strip().lower()
        return await self._people(request, principal, invite=self._invite(hub, email, token))

    @post("/people/role", operation_id="console_person_role", guards=ADMIN_WRITE)
    async def role(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        try:
            changed = await lifecycle.set_role(principal.org_id, form.get("email", ""), form.get("role", ""),
                                               actor=principal.actor)
        except PreloopError as exc:
            return await self._people(request, principal, error=exc.message)
        return await self._people(request, principal, message=f"{changed['email']} is now {changed['role']}.")

    @post("/people/active", operation_id="console_person_active", guards=ADMIN_WRITE)
    async def active(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        wanted = form.get("active") == "1"
        try:
            changed = await lifecycle.set_active(principal.org_id, form.get("email", ""), wanted,
                                                 actor=principal.actor, by_user=principal.user_id)
        except PreloopError as exc:
            return await self._people(request, principal, error=exc.message)
        state = "reactivated" if wanted else "deactivated: their sessions ended and their keys stopped"
        return await self._people(request, principal, message=f"{changed['email']} {state}.")

    # --- teams ---------------------------------------------------------------------------------

    async def _teams(self, request: Request[Any, Any, Any], principal: Principal, *, message: str | None = None,
                     error: str | None = None) -> Template:
        members = await accounts.team_members(principal.org_id)
        people = [p for p in await lifecycle.list_people(principal.org_id) if p["is_active"]]
        team_policies: dict[str, list[str]] = {}
        for approval in await policies.seed_approval_policies(principal.org_id):
            for team in approval["teams"]:
                team_policies.setdefault(team, []).append(approval["name"])
        page = _page(request, "teams.html", teams=sorted(members.items()), people=people, message=message,
                     error=error, team_policies=team_policies)
        return _answer(page, error)

    @get("/teams", operation_id="console_teams")
    async def teams(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        return await self._teams(request, principal)

    async def _team_change(self, request: Request[Any, Any, Any], principal: Principal,
                           change: Callable[[dict[str, str]], Awaitable[str]]) -> Template:
        """Parse the form, make one change through the accounts services, show the teams with its outcome."""
        try:
            message = await change(await _form(request))
        except PreloopError as exc:
            return await self._teams(request, principal, error=exc.message)
        return await self._teams(request, principal, message=message)

    @post("/teams", operation_id="console_team_add", guards=ADMIN_WRITE)
    async def add_team(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        async def change(form: dict[str, str]) -> str:
            team = await accounts.add_team(principal.org_id, form.get("name", "").strip(), actor=principal.actor)
            return f"Team {team['name']} created."
        return await self._team_change(request, principal, change)

    @post("/teams/rename", operation_id="console_team_rename", guards=ADMIN_WRITE)
    async def rename_team(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        async def change(form: dict[str, str]) -> str:
            renamed = await lifecycle.rename_team(principal.org_id, form.get("team", ""),
                                                  form.get("name", "").strip(), actor=principal.actor)
            return f"Team {form.get('team')} is now {renamed['name']}; policies that name the old team need editing."
        return await self._team_change(request, principal, change)

    @post("/teams/delete", operation_id="console_team_delete", guards=ADMIN_WRITE)
    async def delete_team(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        async def change(form: dict[str, str]) -> str:
            await lifecycle.delete_team(principal.org_id, form.get("team", ""), actor=principal.actor)
            return f"Team {form.get('team')} deleted."
        return await self._team_change(request, principal, change)

    @post("/teams/members", operation_id="console_team_member_add", guards=ADMIN_WRITE)
    async def add_member(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        async def change(form: dict[str, str]) -> str:
            await accounts.add_member(principal.org_id, form.get("team", ""), form.get("email", ""),
                                      actor=principal.actor)
            return f"{form.get('email')} added to {form.get('team')}."
        return await self._team_change(request, principal, change)

    @post("/teams/members/remove", operation_id="console_team_member_remove", guards=ADMIN_WRITE)
    async def remove_member(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        async def change(form: dict[str, str]) -> str:
            await lifecycle.remove_member(principal.org_id, form.get("team", ""), form.get("email", ""),
                                          actor=principal.actor)
            return f"{form.get('email')} removed from {form.get('team')}."
        return await self._team_change(request, principal, change)

    # --- channels ------------------------------------------------------------------------------

    async def _channels(self, request: Request[Any, Any, Any], principal: Principal, hub: Hub, *,
                        message: str | None = None, error: str | None = None,
                        tested: dict[str, Any] | None = None) -> Template:
        channels = []
        for info in await channel_settings.list_channels(hub, principal.org_id):
            channels.append({**info, "status": await notifications.channel_status(principal.org_id, info["kind"])})
        page = _page(request, "channels.html", channels=channels, message=message, error=error, tested=tested,
                     secret_fields=SECRET_FIELDS)
        return _answer(page, error)

    @get("/channels", operation_id="console_channels")
    async def channels(self, request: Request, principal: Principal, hub: Hub) -> Template:  # type: ignore[type-arg]
        return await self._channels(request, principal, hub)

    @post("/channels/{kind:str}", operation_id="console_channel_put", guards=ADMIN_WRITE)
    async def put_channel(self, request: Request, principal: Principal, hub: Hub, kind: str) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        body: dict[str, Any] = {"enabled": form.get("enabled") == "on"}
        for name in CHANNEL_FIELDS.get(kind, ()):
            value = form.get(name, "").strip()
            if value or name not in SECRET_FIELDS.get(kind, ()):  # an empty secret field keeps the stored secret
                body[name] = value or None
        try:
            await channel_settings.put_channel(hub, principal.org_id, principal.actor, kind, body)
        except PreloopError as exc:
            return await self._channels(request, principal, hub, error=f"{kind}: {exc.message}")
        return await self._channels(request, principal, hub, message=f"Saved the {kind} settings.")

    @post("/channels/{kind:str}/test", operation_id="console_channel_test", guards=ADMIN_WRITE)
    async def test_channel(self, request: Request, principal: Principal, hub: Hub, kind: str) -> Template:  # type: ignore[type-arg]
        try:
            tested = await notifications.send_test(hub, principal, kind)
        except PreloopError as exc:
            return await self._channels(request, principal, hub, error=f"{kind}: {exc.message}")
        return await self._channels(request, principal, hub, tested=tested)
