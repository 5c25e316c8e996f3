"""Section readers for `approval_policies:` (approvers, quorum, escalation, decline reasons) and references to them."""

from __future__ import annotations

import difflib
from typing import cast

from yaml.nodes import Node, SequenceNode

from policies._nodes import NodeReader
from policies.model import CHANNELS, DECLINE_MODES, DEFAULT_CHANNELS, ON_TIMEOUT, ApprovalPolicy, EscalationLevel

MAX_DECLINE_REASONS = 12
MAX_DECLINE_REASON_CHARS = 200
APPROVAL_FIELDS = (
    "name",
    "description",
    "approvers",
    "teams",
    "quorum",
    "timeout",
    "on_timeout",
    "escalation",
    "channels",
    "require_passkey",
    "decline_mode",
    "require_decline_reason",
    "max_grant",
    "decline_reasons",
)
ESCALATION_FIELDS = ("after", "to")


class ApprovalSections(NodeReader):
    """Reads approval policies; remembers every declared name, valid or not, for the sections that refer to them."""

    team_sizes: dict[str, int] | None
    declared_ap_names: set[str]
    declared_ap_order: list[str]

    def approval_policies(self, node: Node) -> list[ApprovalPolicy]:
        out: list[ApprovalPolicy] = []
        seen: set[str] = set()
        for i, item in enumerate(self.sequence(node, "approval_policies") or []):
            path = f"approval_policies[{i}]"
            fields = self.mapping(item, path, APPROVAL_FIELDS, ("name",), what="an approval policy")
            if fields is None:
                continue
            name = self.string(fields["name"], f"{path}.name") if "name" in fields else None
            if name is not None and name in seen:
                self.add(
                    fields["name"],
                    f"{path}.name",
                    f"duplicate approval policy '{name}'",
                    "names must be unique",
                )
                name = None
            if name is not None:
                self.declared_ap_names.add(name)
                self.declared_ap_order.append(name)
            approvers = self._approvers(fields, path)
            teams = self.string_list(fields["teams"], f"{path}.teams") if "teams" in fields else []
            quorum = self.integer(fields["quorum"], f"{path}.quorum", minimum=1) if "quorum" in fields else 1
            timeout = self.duration(fields["timeout"], f"{path}.timeout") if "timeout" in fields else 3600
            if timeout == 0:
                self.add(
                    fields["timeout"],
                    f"{path}.timeout",
                    "timeout must be longer than 0 seconds",
                    "e.g. timeout: 10m",
                )
            on_timeout = self.optional_string(fields, "on_timeout", path, ON_TIMEOUT) or "decline"
            decline_mode = self.optional_string(fields, "decline_mode", path, DECLINE_MODES) or "immediate"
            channels = (
                self.string_list(fields["channels"], f"{path}.channels")
                if "channels" in fields
                else list(DEFAULT_CHANNELS)
            )
            for j, channel in enumerate(channels or []):
                if channel not in CHANNELS:
                    self.add(
                        cast(SequenceNode, fields["channels"]).value[j],
                        f"{path}.channels[{j}]",
                        f"unknown channel '{channel}'",
                        f"channels: {', '.join(CHANNELS)}",
                    )
            flags = {}
            for key in ("require_passkey", "require_decline_reason"):
                flags[key] = self.boolean(fields[key], f"{path}.{key}") if key in fields else False
            max_grant = (
                self.duration(fields["max_grant"], f"{path}.max_grant") if "max_grant" in fields else 0
            )
            escalation = (
                self.escalation(fields["escalation"], f"{path}.escalation", timeout)
                if "escalation" in fields
                else []
            )
            description = self.optional_string(fields, "description", path)
            reasons = self._decline_reasons(fields, path)
            if approvers is not None and teams is not None and quorum is not None:
                self._check_pool(item, fields, path, approvers, teams, quorum)
            if (
                None in (name, approvers, teams, quorum, timeout, channels, max_grant, escalation, reasons)
                or None in flags.values()
            ):
                continue
            if name is not None:
                seen.add(name)
            out.append(
                ApprovalPolicy(
                    name=cast(str, name),
                    approvers=cast(list[str], approvers),
                    teams=cast(list[str], teams),
                    quorum=cast(int, quorum),
                    timeout_seconds=cast(int, timeout),
                    on_timeout=on_timeout,  # type: ignore[arg-type]
                    escalation=cast(list[EscalationLevel], escalation),
                    channels=cast(list[str], channels),
                    require_passkey=bool(flags["require_passkey"]),
                    decline_mode=decline_mode,  # type: ignore[arg-type]
                    require_decline_reason=bool(flags["require_decline_reason"]),
                    max_grant_seconds=cast(int, max_grant),
                    description=description,
                    decline_reasons=cast(list[str], reasons),
                )
            )
        return out

    def _decline_reasons(self, fields: dict[str, Node], path: str) -> list[str] | None:
        """Preset decline reasons offered as one-tap choices: short, distinct, non-empty lines."""
        if "decline_reasons" not in fields:
            return []
        where = f"{path}.decline_reasons"
        reasons = self.string_list(fields["decline_reasons"], where, "a list of short reasons")
        if reasons is None:
            return None
        node = cast(SequenceNode, fields["decline_reasons"])
        if len(reasons) > MAX_DECLINE_REASONS:
            self.add(node, where, f"{len(reasons)} decline reasons; at most {MAX_DECLINE_REASONS}",
                     "keep the few reasons approvers pick most often")
            return None
        ok = True
        for j, reason in enumerate(reasons):
            text = reason.strip()
            if not text or len(text) > MAX_DECLINE_REASON_CHARS or "\n" in text:
                self.add(node.value[j], f"{where}[{j}]",
                         f"decline reason must be one line of 1 to {MAX_DECLINE_REASON_CHARS} characters",
                         "e.g. decline_reasons: [\"Not during a freeze\", \"Wrong environment\"]")
                ok = False
            elif text in [r.strip() for r in reasons[:j]]:
                self.add(node.value[j], f"{where}[{j}]", f"decline reason '{text}' is listed twice",
                         "list each reason once")
                ok = False
        return [r.strip() for r in reasons] if ok else None

    def _approvers(self, fields: dict[str, Node], path: str) -> list[str] | None:
        if "approvers" not in fields:
            return []
        approvers = self.string_list(fields["approvers"], f"{path}.approvers", "approvers are user emails")
        for j, user in enumerate(approvers or []):
            if "@" not in user:
                self.add(
                    cast(SequenceNode, fields["approvers"]).value[j],
                    f"{path}.approvers[{j}]",
                    f"approver '{user}' is not an email address",
                    "approvers are user emails; put team names under 'teams'",
                )
                approvers = None
        return approvers

    def _check_pool(
        self,
        item: Node,
        fields: dict[str, Node],
        path: str,
        approvers: list[str],
        teams: list[str],
        quorum: int,
    ) -> None:
        if not approvers and not teams:
            self.add(
                item,
                path,
                "approval policy has no approvers and no teams",
                "add 'approvers: [you@example.com]' or 'teams: [sre]'",
            )
            return
        sizes = self.team_sizes
        if teams and (sizes is None or any(team not in sizes for team in teams)):
            return  # a team of unknown size may hold any number of approvers
        pool = len(set(approvers)) + sum((sizes or {})[team] for team in teams)
        if quorum > pool:
            self.add(
                fields.get("quorum", item),
                f"{path}.quorum",
                f"quorum {quorum} is larger than the approver pool ({pool})",
                f"lower quorum to at most {pool} or add approvers or teams",
                value=quorum,
            )

    def escalation(self, node: Node, path: str, timeout: int | None) -> list[EscalationLevel] | None:
        items = self.sequence(node, path, "escalation is a list of {after: 10m, to: [users or teams]}")
        if items is None:
            return None
        out: list[EscalationLevel] = []
        ok = True
        previous = 0
        for i, item in enumerate(items):
            lpath = f"{path}[{i}]"
            fields = self.mapping(item, lpath, ESCALATION_FIELDS, ("after", "to"), what="an escalation level")
            if fields is None or "after" not in fields or "to" not in fields:
                ok = False
                continue
            after = self.duration(fields["after"], f"{lpath}.after")
            targets = self.string_list(
                fields["to"], f"{lpath}.to", "users are emails, anything else is a team"
            )
            if after is None or targets is None:
                ok = False
                continue
            if after <= previous:
                self.add(
                    fields["after"],
                    f"{lpath}.after",
                    "escalation levels must come later than the previous one and after 0s",
                    "'after' is measured from request creation; order levels by time",
                )
                ok = False
            elif timeout is not None and after >= timeout:
                self.add(
                    fields["after"],
                    f"{lpath}.after",
                    "escalation happens at or after the timeout",
                    f"the request expires after {timeout}s; escalate earlier or raise timeout",
                )
                ok = False
            if not targets:
                self.add(
                    fields["to"],
                    f"{lpath}.to",
                    "escalation level has nobody to escalate to",
                    "list users (emails) or team names",
                )
                ok = False
            previous = max(previous, after)
            out.append(
                EscalationLevel(
                    after_seconds=after,
                    users=[t for t in targets if "@" in t],
                    teams=[t for t in targets if "@" not in t],
                )
            )
        return out if ok else None

    def _missing_ap(self, node: Node, path: str, name: str, ap_names: set[str]) -> None:
        close = difflib.get_close_matches(name, sorted(ap_names), n=1)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else (
                f"declared approval policies: {', '.join(sorted(ap_names))}"
                if ap_names
                else "declare it under approval_policies"
            )
        )
        self.add(node, path, f"approval policy '{name}' is not defined", hint)
