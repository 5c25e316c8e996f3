"""The admin console: server-rendered pages (Jinja2 + htmx) over the same services as the REST API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter
from litestar.response import Redirect, Template

from backend.accounts import lifecycle
from backend.accounts import service as accounts
from backend.accounts.service import Principal
from backend.approvals import autonomy, flows, history, inbox, presentation
from backend.approvals import service as approvals
from backend.approvals.schemas import HistoryFilter
from backend.audit import calls
from backend.audit import service as audit
from backend.console import session
from backend.deps import SESSION_COOKIE, admin_guard
from backend.errors import NotAuthenticated, PreloopError, ValidationFailed
from backend.hub import Hub
from backend.notifications import chat
from backend.notifications import service as notifications
from backend.policy_store import replay, ruleedit
from backend.policy_store import service as policies

#: Navigation entries (path, label).
NAV: list[tuple[str, str]] = [
    ("/console/approvals", "Approvals"),
    ("/console/history", "History"),
    ("/console/policies", "Policies"),
    ("/console/audit", "Audit"),
    ("/console/keys", "Agents and keys"),
    ("/console/autonomy", "Autonomy"),
    ("/console/people", "People"),
    ("/console/teams", "Teams"),
    ("/console/channels", "Channels"),
]
HISTORY_PAGE = 100
PENDING = HistoryFilter(status="pending")  # the inbox


def _page(request: Request, name: str, **context: Any) -> Template:  # type: ignore[type-arg]
    principal: Principal | None = request.scope["state"].get("principal")  # type: ignore[typeddict-item]
    token = request.cookies.get(SESSION_COOKIE, "")
    return Template(
        template_name=f"console/{name}",
        context={
            "nav": NAV,
            "path": request.url.path,
            "me": principal,
            "csrf": session.csrf_token(request.app.state.hub, token) if principal else "",
            "csrf_header": json.dumps({"X-CSRF-Token": session.csrf_token(request.app.state.hub, token)})
            if principal else "",
            **context,
        },
    )


async def _form(request: Request) -> dict[str, str]:  # type: ignore[type-arg]
    form = await request.form()
    return {key: str(value) for key, value in form.items()}


def _json_object(text: str | None) -> dict[str, Any]:
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")  # noqa: TRY004 - reported to the person like bad JSON
    return value


def _not_signed_in(request: Request, exc: NotAuthenticated) -> Response[Any]:  # type: ignore[type-arg]
    if request.method == "GET" and "hx-request" not in request.headers:
        return Redirect(f"/console/login?next={quote(request.url.path)}")
    return Response(
        {"error": {"code": exc.code, "message": exc.message, "status": 401}},
        status_code=401,
        headers={"HX-Redirect": "/console/login"},
    )


def _rules_page(
    request: Request[Any, Any, Any], source: str, new_source: str | None, error: str, *, announce: str = "",
    comments_lost: bool = False,
) -> Template:
    entries: list[dict[str, Any]] = []
    try:  # a refused move still lists the rules as they are
        entries = ruleedit.view(source) if source.strip() else []
    except ValidationFailed as exc:
        error = f"the rules cannot be listed until the draft is valid YAML: {exc.message}"
    return _page(request, "_rules.html", entries=entries, error=error, new_source=new_source, announce=announce,
                 comments=ruleedit.has_comments(source), comments_lost=comments_lost)


def _labels(text: str) -> dict[str, str]:
    """`team=payments, env=prod` -> {"team": "payments", "env": "prod"} (the agent's labels policies read)."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValidationFailed(f"labels are key=value pairs separated by commas; {part!r} is not one",
                                   detail={"field": "labels", "hint": "e.g. team=payments, env=prod"})
        labels[key.strip()] = value.strip()
    return labels


KEY_DAYS = 7


async def _keys_page(request: Request[Any, Any, Any], principal: Principal, *, created: dict[str, Any] | None,
                     error: str | None) -> Template:
    keys = await accounts.list_keys(principal)
    per_day = await calls.calls_per_day(principal.org_id, days=KEY_DAYS)
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(KEY_DAYS - 1, -1, -1)]
    for key in keys:
        mine = per_day.get(key["id"], {})
        key["calls"] = [mine.get(day, 0) for day in days]
    page = _page(request, "keys.html", keys=keys, created=created, error=error, days=days,
                 scopes=accounts.mintable_scopes(principal))
    page.status_code = 200 if error is None else 422
    return page


async def writer_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Viewers see everything and change nothing: the server refuses, whatever the page showed."""
    session.refuse_viewer(await session.principal_of(connection))


class ConsoleLoginController(Controller):
    opt = {"form_body": True}  # HTML forms (see backend/request_checks.py)
    path = "/console"
    include_in_schema = False

    @get("/login", operation_id="console_login_page")
    async def login_page(self, request: Request, next: str = "/console/approvals") -> Response[Any]:  # type: ignore[type-arg]
        if await session.signed_in(request):
            return Redirect(session.safe_next(next))
        return _page(request, "login.html", next=session.safe_next(next), error=None, email="", totp_needed=False)

    @post("/login", operation_id="console_login", status_code=200)
    async def login(self, request: Request, hub: Hub) -> Response[Any]:  # type: ignore[type-arg]
        form = await _form(request)
        email, target = form.get("email", ""), session.safe_next(form.get("next", ""))
        try:
            org = await (accounts.get_org_by_slug(form["org"]) if form.get("org") else accounts.default_org())
            token, _ = await accounts.login(
                org["id"], email, form.get("password", ""), hours=hub.settings.security.session_hours,
                totp_code=form.get("totp_code") or None,
            )
        except PreloopError as exc:
            page = _page(request, "login.html", next=target, error=exc.message, email=email,
                         totp_needed=exc.code in ("totp_required", "totp_invalid"))
            page.status_code = 401
            return page
        return Redirect(
            target,
            cookies=[
                Cookie(
                    key=SESSION_COOKIE, value=token, httponly=True, samesite="strict", path="/",
                    secure=hub.settings.server.base_url.startswith("https"),
                    max_age=hub.settings.security.session_hours * 3600,
                )
            ],
        )


class ConsoleController(Controller):
    opt = {"form_body": True}  # HTML forms (see backend/request_checks.py)
    """Every page needs a session; every POST carries the session's CSRF token."""

    path = "/console"
    include_in_schema = False
    guards = [session.session_guard]
    exception_handlers = {NotAuthenticated: _not_signed_in}

    @get("", operation_id="console_home")
    async def home(self) -> Redirect:
        return Redirect("/console/approvals")

    @post("/logout", operation_id="console_logout")
    async def logout(self, request: Request) -> Redirect:  # type: ignore[type-arg]
        await accounts.logout(request.cookies.get(SESSION_COOKIE, ""))
        return Redirect("/console/login", cookies=[Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/")])

    # --- approvals ---------------------------------------------------------------------------

    @get("/approvals", operation_id="console_approvals")
    async def approvals_page(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        pending = await history.list_requests(principal, PENDING, scope="all", limit=200)
        return _page(request, "approvals.html", pending=pending)

    @get("/approvals/pending", operation_id="console_pending_fragment")
    async def pending_fragment(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        pending = await history.list_requests(principal, PENDING, scope="all", limit=200)
        return _page(request, "_pending.html", pending=pending)

    @get("/approvals/bell", operation_id="console_bell_fragment")
    async def bell(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        pending = await history.list_requests(principal, PENDING, limit=10)
        count = len(await history.list_requests(principal, PENDING, limit=1000))
        return _page(request, "_bell.html", pending=pending, count=count)

    @get("/approvals/{approval_id:str}", operation_id="console_approval_detail")
    async def detail(self, request: Request, principal: Principal, approval_id: str) -> Template:  # type: ignore[type-arg]
        return _page(request, "approval.html", **await self._detail(principal, approval_id), error=None)

    @post("/approvals/{approval_id:str}/vote", operation_id="console_vote", guards=[writer_guard])
    async def vote(self, request: Request, principal: Principal, hub: Hub, approval_id: str) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        decision = form.get("decision") or form.get("step_up_decision", "")  # the latter: after a passkey step-up
        error = None
        if decision not in ("approve", "decline"):
            error = "choose approve or decline"
        else:
            try:  # a passkey step-up (require_passkey) arrives as the assertion's JSON from passkeys.js
                assertion = _json_object(form["assertion"]) if form.get("assertion") else None
            except ValueError:
                error = "the passkey confirmation was not readable; decide again"
            else:
                try:
                    await approvals.vote(hub, principal, approval_id, decision, reason=form.get("reason"),
                                         channel="app", assertion=assertion)
                except PreloopError as exc:
                    error = exc.message
        page = _page(request, "approval.html", **await self._detail(principal, approval_id), error=error)
        page.status_code = 200 if error is None else 422
        return page

    async def _detail(self, principal: Principal, approval_id: str) -> dict[str, Any]:
        item = await presentation.get_request(principal, approval_id)
        row = await flows.load_row(item["id"])
        can_vote = row is not None and (await inbox.voting_state(principal, row, item))["can_vote"]
        deliveries = await notifications.deliveries_of_request(principal, item["id"])
        comments = await chat.comments_of_request(principal, item["id"])
        return {"item": item, "can_vote": can_vote, "deliveries": deliveries, "comments": comments}

    @get("/approvals/{approval_id:str}/comments", operation_id="console_comments_fragment")
    async def comments_fragment(self, request: Request, principal: Principal, approval_id: str) -> Template:  # type: ignore[type-arg]
        """The discussion alone: fetched again when the event stream says someone commented."""
        item = await presentation.get_request(principal, approval_id, with_flags=False)
        comments = await chat.comments_of_request(principal, item["id"])
        return _page(request, "_comments.html", item=item, comments=comments)

    @post("/approvals/{approval_id:str}/comments", operation_id="console_comment", guards=[writer_guard])
    async def comment(self, request: Request, principal: Principal, hub: Hub, approval_id: str) -> Response[Any]:  # type: ignore[type-arg]
        form = await _form(request)
        try:
            await chat.add_comment(hub, principal, approval_id, form.get("text", ""), source="console")
        except PreloopError as exc:
            page = _page(request, "approval.html", **await self._detail(principal, approval_id), error=None,
                         comment_error=exc.message, comment_draft=form.get("text", ""))
            page.status_code = 422
            return page
        return Redirect(f"/console/approvals/{quote(approval_id, safe='')}#discussion", status_code=303)

    # --- history -------------------------------------------------------------------------------

    @get("/history", operation_id="console_history")
    async def history(
        self, request: Request, principal: Principal, offset: int = Parameter(default=0, ge=0)  # type: ignore[type-arg]
    ) -> Template:
        filters = HistoryFilter.from_query(request.query_params)
        error, rows = None, []
        try:
            rows = await history.list_requests(principal, filters, scope="all", limit=HISTORY_PAGE + 1, offset=offset)
        except ValidationFailed as exc:
            error = exc.message
        query = urlencode(filters.as_query())
        older = offset + HISTORY_PAGE if len(rows) > HISTORY_PAGE else None
        newer = max(0, offset - HISTORY_PAGE) if offset else None
        return _page(request, "history.html", rows=rows[:HISTORY_PAGE], filters=filters, error=error, query=query,
                     statuses=("pending", *sorted(flows.DECIDED)), older=older, newer=newer)

    # --- policies ------------------------------------------------------------------------------

    @get("/policies", operation_id="console_policies")
    async def policies_page(
        self, request: Request, principal: Principal, suggestion: str = ""  # type: ignore[type-arg]
    ) -> Template:
        active = await policies.active_row(principal.org_id)
        source = active["source"] if active else ""
        message = None
        if suggestion:  # a gradual-autonomy suggestion, loaded into the editor for review (not applied)
            found = await autonomy.suggestion(principal.org_id, suggestion)
            if found is None:
                message = "Not loaded: that suggestion no longer matches the recorded calls or the active policy."
            else:
                source = found.source
                message = (f"Suggestion loaded into the editor, not applied: {found.summary} "
                           "Check the dry run below, then Apply.")
        check = await policies.check_source(principal.org_id, source) if source else None
        return _page(request, "policies.html", source=source, active=active, check=check,
                     versions=await policies.list_versions(principal.org_id), message=message,
                     approval_names=ruleedit.approval_policy_names(source))

    @post("/policies/dry-run", operation_id="console_policy_dry_run")
    async def dry_run(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        run, error = None, None
        try:
            run = await replay.dry_run(principal.org_id, form.get("source", ""))
        except ValidationFailed as exc:
            error = exc.message
        return _page(request, "_dryrun.html", run=run, error=error, max_records=replay.MAX_RECORDS)

    @post("/policies/rules", operation_id="console_policy_rules")
    async def rules(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        return _rules_page(request, form.get("source", ""), None, "")

    @post("/policies/rules/move", operation_id="console_policy_rule_move")
    async def move_rule(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        """Move one rule in the draft (not applied): answers the new rule list and the rewritten YAML."""
        form = await _form(request)
        source = form.get("source", "")
        try:
            entry, rule, to = int(form.get("entry", "")), int(form.get("rule", "")), int(form.get("to", ""))
            moved = ruleedit.move_rule(source, entry, rule, to)
        except ValueError:
            page = _rules_page(request, source, None, "entry, rule and to must be numbers")
        except ValidationFailed as exc:
            page = _rules_page(request, source, None, exc.message)
        else:
            name = ruleedit.view(moved)[entry]["name"]
            return _rules_page(request, moved, moved, "", comments_lost=ruleedit.has_comments(source),
                               announce=f"{name}: rule {rule + 1} moved to position {to + 1}")
        page.status_code = 422
        return page

    @post("/policies/quorum", operation_id="console_policy_quorum")
    async def set_quorum(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        """Set one approval policy's quorum in the draft (not applied): the editor gets the rewritten YAML."""
        form = await _form(request)
        source, name = form.get("source", ""), form.get("approval_policy", "")
        try:
            source = ruleedit.set_quorum(source, name, int(form.get("quorum", "")))
            message = f"Quorum of {name} set to {form['quorum']} in the draft, not applied yet: check it, then Apply."
        except ValueError:
            message = "Not changed: the quorum must be a whole number"
        except ValidationFailed as exc:
            message = f"Not changed: {exc.message}"
        page = _page(request, "policies.html", source=source, active=await policies.active_row(principal.org_id),
                     check=await policies.check_source(principal.org_id, source) if source else None,
                     versions=await policies.list_versions(principal.org_id), message=message,
                     approval_names=ruleedit.approval_policy_names(source))
        page.status_code = 422 if message.startswith("Not ") else 200
        return page

    @post("/policies/check", operation_id="console_policy_check")
    async def check(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        check = await policies.check_source(principal.org_id, form.get("source", ""))
        return _page(request, "_check.html", check=check)

    @post("/policies/explain", operation_id="console_policy_explain")
    async def explain(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        error, result = None, None
        try:
            args, labels = _json_object(form.get("args")), _json_object(form.get("agent_labels"))
            result = await policies.explain_source(
                principal, form.get("source", ""), tool=form.get("tool", "").strip(),
                server=form.get("server", "").strip(), args=args,
                agent={"name": form.get("agent", "").strip(), "labels": labels},
            )
        except ValueError as exc:
            error = f"arguments and agent labels must be JSON objects, e.g. {{\"table\": \"users\"}} ({exc})"
        except PreloopError as exc:
            error = exc.message
        return _page(request, "_explain.html", result=result, error=error)

    @post("/policies/apply", operation_id="console_policy_apply", guards=[writer_guard, admin_guard])
    async def apply(self, request: Request, principal: Principal, hub: Hub) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        source = form.get("source", "")
        message = None
        try:
            applied = await policies.apply(principal.org_id, source, principal.actor, hub.bus,
                                           message=form.get("message", ""), user_id=principal.user_id)
            message = f"Applied as version {applied['version']}."
            if applied["warnings"]:
                message += " Warnings: " + "; ".join(applied["warnings"])
        except PreloopError as exc:
            message = f"Not applied: {exc.message}"
        active = await policies.active_row(principal.org_id)
        return _page(request, "policies.html", source=source, active=active,
                     check=await policies.check_source(principal.org_id, source),
                     versions=await policies.list_versions(principal.org_id), message=message,
                     approval_names=ruleedit.approval_policy_names(source))

    @get("/policies/versions/{version:int}", operation_id="console_policy_version")
    async def version(self, request: Request, principal: Principal, version: int) -> Template:  # type: ignore[type-arg]
        chosen = await policies.get_version(principal.org_id, version)
        active = await policies.active_row(principal.org_id)
        compare = policies.diff_sources(active["source"] if active else "", chosen["source"])
        return _page(request, "version.html", chosen=chosen, active=active, diff=compare)

    @post("/policies/rollback", operation_id="console_policy_rollback", guards=[writer_guard, admin_guard])
    async def rollback(self, request: Request, principal: Principal, hub: Hub) -> Redirect:  # type: ignore[type-arg]
        form = await _form(request)
        try:
            version = int(form.get("version", ""))
        except ValueError as exc:
            raise ValidationFailed("rollback needs a version number", detail={"field": "version"}) from exc
        await policies.rollback(principal.org_id, version, principal.actor, hub.bus, principal.user_id)
        return Redirect("/console/policies")

    # --- gradual autonomy ----------------------------------------------------------------------

    @get("/autonomy", operation_id="console_autonomy")
    async def autonomy_page(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        return _page(request, "autonomy.html", report=await autonomy.report(principal.org_id),
                     max_records=replay.MAX_RECORDS)

    # --- audit ---------------------------------------------------------------------------------

    @get("/audit", operation_id="console_audit")
    async def audit_page(
        self, request: Request, principal: Principal, kind: str = "", actor: str = "", subject: str = ""  # type: ignore[type-arg]
    ) -> Template:
        events = await audit.list_events(principal.org_id, kind=kind or None, actor=actor or None,
                                         subject_id=subject or None, newest_first=True, limit=200)
        verified = (await audit.verify(principal.org_id)).to_dict()
        return _page(request, "audit.html", events=events, verified=verified,
                     filters={"kind": kind, "actor": actor, "subject": subject})

    # --- agents and keys -----------------------------------------------------------------------

    @get("/keys", operation_id="console_keys")
    async def keys_page(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        return await _keys_page(request, principal, created=None, error=None)

    @post("/keys", operation_id="console_key_create", guards=[writer_guard])
    async def create_key(self, request: Request, principal: Principal) -> Template:  # type: ignore[type-arg]
        form = await _form(request)
        created, error = None, None
        try:
            token, meta = await accounts.mint_key(principal, form.get("name", ""), scope=form.get("scope", "agent"),
                                                  labels=_labels(form.get("labels", "")))
            created = {**meta, "token": token}
        except PreloopError as exc:
            error = exc.message
        page = await _keys_page(request, principal, created=created, error=error)
        page.headers["Cache-Control"] = "no-store"
        return page

    @post("/keys/{key_id:str}/revoke", operation_id="console_key_revoke", guards=[writer_guard])
    async def revoke_key(self, principal: Principal, key_id: str) -> Redirect:
        await lifecycle.revoke_key_for(principal, key_id)
        return Redirect("/console/keys")


CONTROLLERS: list[Any] = [ConsoleLoginController, ConsoleController]
