"""The compiled policy and its evaluator: tool lookup, ordered rules, first match wins, fail closed."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo

import cel

from policies import canonical
from policies.celexpr import CEL_VARIABLES, FLATTENABLE, flat_name, flatten
from policies.loader import ParsedPolicy
from policies.model import (
    Action,
    ApprovalPolicy,
    CallContext,
    Decision,
    Defaults,
    Justification,
    PolicyTestCase,
    ResourceRule,
    Rule,
    RuleInfo,
    ServerConfig,
    ToolEntry,
)

#: The call name a `resources/read` is judged (and held for approval) under.
RESOURCE_READ = "resources/read"

# Everything the cel extension raises for a condition that cannot be evaluated on these inputs
# (missing key, wrong type, division by zero, unconvertible argument values).
_CEL_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    ArithmeticError,
    AttributeError,
)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CACHE_LIMIT = 4096
_MISSING: Any = object()


class _NoClockError(Exception):
    """A condition reads ``now`` or ``time`` but the caller gave no ``now``."""


class _Plan:
    """Everything needed to decide calls that resolve to one tool entry, prepared at load time."""

    __slots__ = (
        "arg_keys",
        "combined",
        "entry",
        "flat",
        "flat_args",
        "flat_extra",
        "index",
        "justification",
        "justification_decision",
        "needs",
        "no_match",
        "only_args",
        "outcomes",
        "shortcut",
        "steps",
        "use_context",
    )

    def __init__(
        self,
        entry: ToolEntry | None,
        index: int,
        justification: Justification,
        steps: list[tuple[Any, Decision, Decision]],
        no_match: Decision,
        justification_decision: Decision,
        needs: tuple[str, ...],
        arg_keys: tuple[str, ...] | None = None,
    ) -> None:
        self.entry = entry
        self.index = index
        self.justification = justification
        self.justification_decision = justification_decision
        self.steps = steps
        self.no_match = no_match
        self.needs = needs
        self.only_args = needs == ("args",)
        # Top-level argument keys the conditions read; None when they look at ``args`` as a whole.
        # Converting only these to CEL values keeps large arguments (file contents, diffs) cheap.
        self.arg_keys = arg_keys
        # A prepared cel.Context pays off once two or more programs read the same variables.
        self.use_context = sum(1 for program, _, _ in steps if program is not None) > 1
        # All conditions folded into one program returning the index of the first match
        # (``c0 ? 0 : c1 ? 1 : -1``): one CEL call per decision instead of one per rule. Ternaries
        # short-circuit exactly like the rule order; on any error evaluation falls back to rule by
        # rule, which finds and reports the failing rule.
        conditional = [program for program, _, _ in steps if program is not None]
        self.outcomes: list[Decision] = [decision for program, decision, _ in steps if program is not None]
        self.outcomes.append(steps[len(conditional)][1] if len(conditional) < len(steps) else no_match)
        self.combined: Any = None
        if len(conditional) > 1:
            folded = "-1"
            for k in range(len(conditional) - 1, -1, -1):
                folded = f"({conditional[k].source}) ? {k} : ({folded})"
            try:
                self.combined = cel.compile(folded)
            except (ValueError, RuntimeError, TypeError):
                self.combined = None
        self._prepare_flat(conditional)
        if not steps:
            self.shortcut: Decision | None = no_match
        elif steps[0][0] is None:
            self.shortcut = steps[0][1]
        else:
            self.shortcut = None

    def _prepare_flat(self, conditional: list[Any]) -> None:
        # The fast path: the folded program over flattened variables (see celexpr.flatten).
        self.flat: Any = None
        self.flat_args: tuple[tuple[str, str], ...] = ()
        self.flat_extra: tuple[tuple[str, str | None, str], ...] = ()
        if not conditional:
            return
        folded = "-1"
        fields: set[tuple[str, str]] = set()
        plain: set[str] = set()
        for k in range(len(conditional) - 1, -1, -1):
            flat = flatten(conditional[k].source)
            if flat is None:
                return
            fields |= flat.fields
            plain |= set(conditional[k].variables()) & (CEL_VARIABLES - set(FLATTENABLE))
            folded = f"({flat.source}) ? {k} : ({folded})"
        try:
            self.flat = cel.compile(folded)
        except (ValueError, RuntimeError, TypeError):
            return
        self.flat_args = tuple(sorted((f, flat_name(b, f)) for b, f in fields if b == "args"))
        extra: list[tuple[str, str | None, str]] = [
            (b, f, flat_name(b, f)) for b, f in sorted(fields) if b != "args"
        ]
        extra += [(name, None, name) for name in sorted(plain)]
        self.flat_extra = tuple(extra)


class Policy:
    """A loaded, checked and compiled policy; immutable and safe to share between threads."""

    def __init__(self, parsed: ParsedPolicy, source: str = "<policy>", text: str = "") -> None:
        self.source = source
        self.text = text
        self.version = parsed.version
        self.name = parsed.name
        self.description = parsed.description
        self.timezone = parsed.timezone
        self.servers: list[ServerConfig] = list(parsed.servers)
        self.approval_policies: list[ApprovalPolicy] = list(parsed.approval_policies)
        self.tools: list[ToolEntry] = list(parsed.tools)
        self.defaults: Defaults = parsed.defaults
        self.tests: list[PolicyTestCase] = list(parsed.tests)
        self.resources: list[ResourceRule] = list(parsed.resources)
        self._tz = ZoneInfo(parsed.timezone)
        self._by_name = {ap.name: ap for ap in self.approval_policies}
        default_name = self.defaults.approval_policy or (
            self.approval_policies[0].name if self.approval_policies else None
        )
        self.default_approval_policy: ApprovalPolicy | None = self._by_name.get(default_name or "")
        self._plans = [self._plan(i, entry, parsed.programs) for i, entry in enumerate(self.tools)]
        self._exact: dict[str, list[_Plan]] = {}
        self._globs: list[_Plan] = []
        for plan in self._plans:
            name = plan.entry.name if plan.entry is not None else ""
            if any(ch in name for ch in "*?["):
                self._globs.append(plan)
            else:
                self._exact.setdefault(name, []).append(plan)
        self._unknown = self._unknown_plan()
        self._cache: dict[tuple[str, str | None], _Plan] = {}
        self.version_hash: str = canonical.version_hash(self.to_dict())

    # -- public API ----------------------------------------------------------------------
    def approval_policy(self, name: str) -> ApprovalPolicy | None:
        return self._by_name.get(name)

    def server(self, name: str) -> ServerConfig | None:
        return next((s for s in self.servers if s.name == name), None)

    def servers_listing(self, tool: str) -> list[str]:
        """The servers whose tool entries name ``tool`` (exactly or by glob), in policy order, once each."""
        names: list[str] = []
        for entry in self.tools:
            if entry.server is not None and entry.server not in names and (
                entry.name == tool or fnmatchcase(tool, entry.name)
            ):
                names.append(entry.server)
        return names

    def justification_for(self, tool: str, server: str | None = None) -> Justification:
        """Whether calls of ``tool`` must, may or must not carry a justification."""
        return self._resolve(tool, server).justification

    def to_dict(self) -> dict[str, Any]:
        """The canonical document: every default written out, durations in seconds."""
        return canonical.policy_to_dict(self)

    def evaluate(self, ctx: CallContext) -> Decision:
        """Decide one call. Never raises for any tool name or arguments."""
        if ctx.tool == RESOURCE_READ and self.resources:
            uri = ctx.args.get("uri") if isinstance(ctx.args, dict) else None
            return self.evaluate_resource(str(uri or ""))
        plan: _Plan = self._cache.get((ctx.tool, ctx.server), _MISSING)
        if plan is _MISSING:
            plan = self._resolve(ctx.tool, ctx.server)
        if plan.justification == "required" and not (ctx.justification and ctx.justification.strip()):
            return plan.justification_decision
        if plan.shortcut is not None:
            return plan.shortcut
        flat = plan.flat
        args = ctx.args
        if flat is not None and type(args) is dict:
            variables: dict[str, Any] = {}
            for key, name in plan.flat_args:
                if key not in args:
                    break
                variables[name] = args[key]
            else:
                if not plan.flat_extra or self._fill_extra(plan, ctx, variables):
                    try:
                        index = flat.execute(variables)
                    except _CEL_ERRORS:
                        index = None
                    if type(index) is int:
                        return plan.outcomes[index]
        try:
            if plan.only_args:
                variables = {"args": _args_view(ctx.args, plan.arg_keys)}
            else:
                variables = {name: self._variable(name, ctx, plan.arg_keys) for name in plan.needs}
            combined = plan.combined
            if combined is not None:
                try:
                    index = combined.execute(variables)
                except _CEL_ERRORS:
                    index = None
                if type(index) is int:
                    return plan.outcomes[index]
            activation: Any = cel.Context(variables=variables) if plan.use_context else variables
        except _NoClockError:
            return _failed(plan.steps[0][2], "no clock was given (CallContext.now is None)")
        except _CEL_ERRORS as exc:
            return _failed(plan.steps[0][2], _describe(exc))
        for program, decision, on_error in plan.steps:
            if program is None:
                return decision
            try:
                result = program.execute(activation)
            except _CEL_ERRORS as exc:
                return _failed(on_error, _describe(exc))
            if result is True:
                return decision
            if result is not False:
                return _failed(on_error, f"condition returned {type(result).__name__}, not a boolean")
        return plan.no_match

    # -- lookup ----------------------------------------------------------------------------
    def _resolve(self, tool: str, server: str | None) -> _Plan:
        found = self._cache.get((tool, server))
        if found is not None:
            return found
        candidates = [p for p in self._exact.get(tool, ()) if _server_ok(p.entry, server)]
        candidates += [
            p
            for p in self._globs
            if _server_ok(p.entry, server) and p.entry is not None and fnmatchcase(tool, p.entry.name)
        ]
        plan = min(candidates, key=lambda p: p.index) if candidates else self._unknown
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[(tool, server)] = plan
        return plan

    # -- preparation -------------------------------------------------------------------------
    def _plan(self, i: int, entry: ToolEntry, programs: dict[tuple[int, int], Any]) -> _Plan:
        steps: list[tuple[Any, Decision, Decision]] = []
        needs: set[str] = set()
        arg_keys: set[str] | None = set()
        for j, rule in enumerate(entry.rules):
            program = programs.get((i, j)) if rule.when is not None else None
            if program is not None:
                needs.update(set(program.variables()) & CEL_VARIABLES)
                keys = args_keys_read(rule.when or "")
                arg_keys = None if keys is None or arg_keys is None else arg_keys | keys
            info = RuleInfo(
                tool=entry.name,
                server=entry.server,
                index=j,
                action=rule.action,
                when=rule.when,
                description=rule.description,
                risk=rule.risk,
                message=rule.message,
                approval_policy=ap.name if (ap := self._ap_for(rule)) is not None else None,
            )
            steps.append(
                (program, self._match_decision(entry, j, rule, info), self._error_decision(rule, info))
            )
            if program is None:
                break  # an unconditional rule ends the list: later rules can never match
        justification = entry.justification or self.defaults.justification
        no_match = self._default_decision(
            self.defaults.no_match,
            f"no rule for '{entry.name}' matched; defaults.no_match is {self.defaults.no_match}",
        )
        return _Plan(
            entry,
            i,
            justification,
            steps,
            no_match,
            _justification_decision(entry.name),
            tuple(sorted(needs)),
            tuple(sorted(arg_keys)) if arg_keys is not None else None,
        )

    def _unknown_plan(self) -> _Plan:
        action = self.defaults.unknown_tools
        decision = self._default_decision(
            action, f"the tool is not listed in the policy; defaults.unknown_tools is {action}"
        )
        return _Plan(
            None, -1, self.defaults.justification, [], decision, _justification_decision("this tool"), ()
        )

    def evaluate_resource(self, uri: str) -> Decision:
        """Decide one `resources/read` by the `resources:` rules (first matching URI glob); none: allow.

        The hub sees a held read as the call `resources/read` with arguments `{"uri": ...}`, so both
        sides reach the same decision through `evaluate`.
        """
        for j, rule in enumerate(self.resources):
            if fnmatchcase(uri, rule.uri):
                ap = self._ap_for(rule)  # type: ignore[arg-type]
                info = RuleInfo(
                    tool=RESOURCE_READ,
                    index=j,
                    action=rule.action,
                    when=f"uri matches {rule.uri}",
                    description=rule.description,
                    message=rule.message,
                    approval_policy=ap.name if ap is not None else None,
                )
                why = rule.description or rule.message
                reason = f"Resource rule {j + 1} ({rule.uri}) matched" + (f": {why}" if why else "") + "."
                return Decision(action=rule.action, reason=reason, rule=info, approval_policy=ap, message=rule.message)
        return Decision(action="allow", reason="No resource rule matched; reading resources is allowed by default.")

    def _ap_for(self, rule: Rule) -> ApprovalPolicy | None:
        if rule.action != "require_approval":
            return None
        if rule.approval_policy is not None:
            return self._by_name.get(rule.approval_policy)
        return self.default_approval_policy

    def _default_decision(self, action: Action, reason: str) -> Decision:
        ap = self.default_approval_policy if action == "require_approval" else None
        return Decision(action=action, reason=reason[0].upper() + reason[1:] + ".", approval_policy=ap)

    def _match_decision(self, entry: ToolEntry, j: int, rule: Rule, info: RuleInfo) -> Decision:
        what = f"Rule {j + 1} of '{entry.name}'"
        why = rule.description or rule.message
        text = f"{what} matched"
        if rule.when:
            text += f" ({rule.when})"
        else:
            text += " (always)"
        if why:
            text += f": {why}"
        return Decision(
            action=rule.action,
            reason=text + ".",
            rule=info,
            approval_policy=self._ap_for(rule),
            risk=rule.risk,
            message=rule.message,
        )

    def _error_decision(self, rule: Rule, info: RuleInfo) -> Decision:
        # Fail closed: a condition that errors counts as a match for deny and require_approval
        # rules; an allow rule that errors never allows — the call is held for the default
        # approval policy, or denied when the policy has none.
        if rule.action in ("deny", "require_approval"):
            action: Action = rule.action
            ap = self._ap_for(rule)
        elif self.default_approval_policy is not None:
            action, ap = "require_approval", self.default_approval_policy
        else:
            action, ap = "deny", None
        return Decision(
            action=action,
            reason=f"Rule {info.index + 1} of '{info.tool}'",
            rule=info,
            approval_policy=ap,
            risk=rule.risk,
            message=rule.message,
            error="",
        )

    def _fill_extra(self, plan: _Plan, ctx: CallContext, variables: dict[str, Any]) -> bool:
        """Add the non-argument variables of the fast path; False sends the call to the slow path."""
        maps: dict[str, Any] = {}
        try:
            for base, field, name in plan.flat_extra:
                if field is None:
                    variables[name] = self._variable(name, ctx, None)
                    continue
                if base not in maps:
                    maps[base] = self._variable(base, ctx, None)
                value = maps[base].get(field, _MISSING)
                if value is _MISSING:
                    return False
                variables[name] = value
        except _NoClockError:
            return False
        return True

    def _variable(self, name: str, ctx: CallContext, arg_keys: tuple[str, ...] | None) -> Any:
        if name == "args":
            return _args_view(ctx.args, arg_keys)
        if name == "tool":
            return ctx.tool
        if name == "server":
            return ctx.server or ""
        if name == "justification":
            return ctx.justification or ""
        if name == "agent":
            agent = ctx.agent
            if agent is None:
                return {"name": "", "id": "", "labels": {}}
            return {"name": agent.name, "id": agent.id, "labels": dict(agent.labels)}
        now = ctx.now
        if now is None:
            raise _NoClockError
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if name == "now":
            return now
        return time_map(now, self._tz)


def time_map(now: datetime, tz: ZoneInfo) -> dict[str, Any]:
    """The ``time`` variable: ``now`` seen on the wall clock of the policy's timezone."""
    local = now.astimezone(tz)
    iso = local.isoweekday()
    return {
        "weekday": _WEEKDAYS[iso - 1],
        "weekday_number": iso,
        "is_weekend": iso >= 6,
        "hour": local.hour,
        "minute": local.minute,
        "date": local.date().isoformat(),
        "day": local.day,
        "month": local.month,
        "year": local.year,
        "timezone": str(tz),
    }


_ARGS_USE = re.compile(r"(?<![A-Za-z0-9_.])args(?![A-Za-z0-9_])(\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)(\s*\()?)?")


def args_keys_read(source: str) -> set[str] | None:
    """Top-level keys of ``args`` an expression reads, or None when it uses ``args`` otherwise.

    Only ``args.NAME`` selections narrow the set; any other use (``size(args)``, ``args['k']``,
    ``'k' in args``, ``args.size()``) needs the whole map. A mention inside a string literal can
    only widen the result, never hide a real use, so the narrowing is always safe.
    """
    keys: set[str] = set()
    for match in _ARGS_USE.finditer(source):
        if match.group(2) is None or match.group(3) is not None:
            return None
        keys.add(match.group(2))
    return keys


def _args_view(args: Any, keys: tuple[str, ...] | None) -> Any:
    if keys is None or not isinstance(args, dict):
        return args
    return {key: args[key] for key in keys if key in args}


def _server_ok(entry: ToolEntry | None, server: str | None) -> bool:
    if entry is None or entry.server is None:
        return True
    if server is None:
        return False
    return entry.server == server or fnmatchcase(server, entry.server)


def _justification_decision(name: str) -> Decision:
    return Decision(
        action="deny",
        reason=f"Tool '{name}' requires a justification and none was given.",
        message="This tool requires a justification: say why you are calling it.",
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _failed(template: Decision, why: str) -> Decision:
    reason = f"{template.reason} could not be evaluated ({why}); failing closed: {template.action}."
    return Decision(
        action=template.action,
        reason=reason,
        rule=template.rule,
        approval_policy=template.approval_policy,
        risk=template.risk,
        message=template.message,
        error=why,
    )
