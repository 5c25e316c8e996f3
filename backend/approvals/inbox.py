"""The approver's inbox: what the caller may vote on, and how each pending request stands for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from backend.accounts.service import Principal
from backend.approvals import flows

Eligible = Callable[[dict[str, Any]], Awaitable[dict[str, str]]]

SCOPES = ("mine", "all")


def arguments_to_run(arguments: dict[str, Any], input_schema: dict[str, Any] | None) -> dict[str, Any]:
    """The arguments as the upstream will see them: the call's own, plus the defaults its schema declares."""
    properties = (input_schema or {}).get("properties")
    if not isinstance(properties, dict):
        return dict(arguments)
    filled = dict(arguments)
    for name, spec in properties.items():
        if name not in filled and isinstance(spec, dict) and "default" in spec:
            filled[name] = spec["default"]
    return filled


def shared_eligibility() -> Eligible:
    """`flows.eligible_users` for the rows of one listing: rows that name the same voters (most rows of an
    inbox come from a few approval policies) are looked up once, not once per row."""
    found: dict[tuple[Any, ...], dict[str, str]] = {}

    async def eligible(row: dict[str, Any]) -> dict[str, str]:
        key = flows.eligibility_key(row)
        if key not in found:
            found[key] = await flows.eligible_users(row)
        return found[key]

    return eligible


async def voting_state(
    principal: Principal, row: dict[str, Any], item: dict[str, Any], *, eligible: Eligible | None = None
) -> dict[str, Any]:
    """can_vote, why not, and the caller's own vote, for one presented request."""
    mine = next((v for v in item["votes"] if v["user"]["id"] == str(principal.user_id)), None)
    why_not: str | None = None
    if item["status"] != "pending":
        why_not = f"the request is {item['status']}"
    elif mine is not None:
        why_not = f"you {'approved' if mine['decision'] == 'approve' else 'declined'}"
    elif not principal.can_decide:
        why_not = "agent keys cannot vote"
    elif principal.role == "viewer":
        why_not = "viewers do not vote"
    elif str(principal.user_id) == str(row.get("requester") or ""):
        why_not = "your key made this request"
    elif str(principal.user_id) not in await (eligible or flows.eligible_users)(row):
        why_not = "you are not an approver of this request"
    return {
        "can_vote": why_not is None,
        "why_not": why_not,
        "my_vote": mine["decision"] if mine else None,
    }
