"""Running the ``tests:`` section of a policy: each case's decision against its expectation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from policies.engine import Policy
from policies.model import CallContext, Decision, PolicyTestCase

#: The instant used for cases without ``at`` (a Wednesday, midday UTC), so results never
#: depend on when the tests run.
DEFAULT_TEST_TIME = datetime(2025, 1, 8, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one test case; ``problems`` says what differed when it failed."""

    index: int
    case: PolicyTestCase
    decision: Decision
    passed: bool
    problems: list[str]

    @property
    def label(self) -> str:
        return self.case.name or f"tests[{self.index}] {self.case.tool}"


def run_policy_tests(policy: Policy, now: datetime = DEFAULT_TEST_TIME) -> list[CaseResult]:
    """Evaluate every case of ``policy.tests``; ``now`` stands in for cases without ``at``."""
    results: list[CaseResult] = []
    for index, case in enumerate(policy.tests):
        decision = policy.evaluate(
            CallContext(
                tool=case.tool,
                server=case.server,
                args=case.args,
                agent=case.agent,
                justification=case.justification,
                now=case.at or now,
            )
        )
        problems: list[str] = []
        if decision.action != case.expect:
            problems.append(f"expected {case.expect}, got {decision.action}: {decision.reason}")
        if case.rule is not None:
            rule = decision.rule
            if rule is None:
                problems.append(f"expected rule {case.rule!r}, but no rule decided ({decision.reason})")
            elif isinstance(case.rule, int) and rule.index != case.rule:
                problems.append(f"expected rule index {case.rule}, got {rule.index}")
            elif isinstance(case.rule, str) and case.rule not in (
                rule.description,
                f"{rule.tool}[{rule.index}]",
            ):
                problems.append(
                    f"expected rule {case.rule!r}, got {rule.description or rule.tool}[{rule.index}]"
                )
        if case.approval_policy is not None:
            got = decision.approval_policy.name if decision.approval_policy else None
            if got != case.approval_policy:
                problems.append(f"expected approval policy {case.approval_policy!r}, got {got!r}")
        results.append(
            CaseResult(index=index, case=case, decision=decision, passed=not problems, problems=problems)
        )
    return results
