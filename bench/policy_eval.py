"""Decisions per second of the policy evaluator against pure-Python cel-python on the same conditions.

A generated policy of 50 tools and 200 rules (4 per tool: three CEL conditions and a fallback)
is decided for a fixed, seeded stream of calls. The baseline evaluates the same rules in the same
first-match order with ``celpy`` (precompiled programs, activation built per call) — the engine
Preloop's open-source release uses. Ends with one line:
``RESULT decisions_per_s=N baseline_per_s=N ratio=X``.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import celpy

from policies import AgentInfo, CallContext, load_policy

TOOLS = 50
CONDITIONS = [
    "args.amount > {n}",
    "args.environment == 'production' && args.amount > {n}",
    "args.region in ['eu-west-1', 'us-east-1'] || args.amount >= {n}",
    "size(args.tags) > 2 && args.priority < {n}",
    "args.user.startsWith('admin') && args.amount < {n}",
    "args.priority >= 3 && args.environment != 'dev'",
]
ACTIONS = ["require_approval", "deny", "allow"]


def build_policy_text(seed: int = 7) -> tuple[str, list[tuple[str, list[tuple[str, str]]]]]:
    rng = random.Random(seed)
    rules_by_tool: list[tuple[str, list[tuple[str, str]]]] = []
    lines = [
        'version: "1"',
        "approval_policies:",
        "  - {name: ops, approvers: [ops@example.com], timeout: 10m}",
        "tools:",
    ]
    for t in range(TOOLS):
        name = f"tool_{t:02d}"
        lines.append(f"  - name: {name}")
        lines.append("    rules:")
        rules = []
        for _ in range(3):
            cond = rng.choice(CONDITIONS).format(n=rng.randint(1, 1000))
            action = rng.choice(ACTIONS)
            rules.append((cond, action))
            lines.append(f'      - when: "{cond}"')
            lines.append(f"        action: {action}")
        rules.append(("", "allow"))
        lines.append("      - action: allow")
        rules_by_tool.append((name, rules))
    lines.append("defaults: {unknown_tools: deny}")
    return "\n".join(lines) + "\n", rules_by_tool


def build_calls(count: int, seed: int = 11) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    calls = []
    for _ in range(count):
        args = {
            "amount": rng.randint(0, 1500),
            "environment": rng.choice(["production", "staging", "dev"]),
            "region": rng.choice(["eu-west-1", "us-east-1", "ap-south-1"]),
            "tags": [f"t{i}" for i in range(rng.randint(0, 5))],
            "priority": rng.randint(0, 5),
            "user": rng.choice(["admin-ana", "bob", "carol"]),
        }
        calls.append((f"tool_{rng.randrange(TOOLS):02d}", args))
    return calls


def run_ours(
    text: str, calls: list[tuple[str, dict[str, Any]]], seconds: float
) -> tuple[float, list[float], list[str]]:
    policy = load_policy(text, source="bench")
    now = datetime(2025, 1, 8, 12, tzinfo=UTC)
    agent = AgentInfo(name="bench", id="k_1")
    contexts = [CallContext(tool=tool, server=None, args=args, agent=agent, now=now) for tool, args in calls]
    evaluate = policy.evaluate
    for ctx in contexts[:2000]:  # warm the tool lookup cache
        evaluate(ctx)
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for ctx in contexts:
            evaluate(ctx)
        done += len(contexts)
    rate = done / (time.perf_counter() - start)
    latencies = []
    clock = time.perf_counter_ns
    for ctx in contexts[:20000]:
        t0 = clock()
        evaluate(ctx)
        latencies.append((clock() - t0) / 1000)
    actions = [evaluate(ctx).action for ctx in contexts[:500]]
    return rate, latencies, actions


def run_baseline(
    rules_by_tool: list[tuple[str, list[tuple[str, str]]]], calls: list[tuple[str, dict[str, Any]]], seconds: float
) -> tuple[float, list[float], list[str]]:
    env = celpy.Environment()
    compiled = {
        name: [(env.program(env.compile(cond)) if cond else None, action) for cond, action in rules]
        for name, rules in rules_by_tool
    }

    def decide(tool: str, args: dict[str, Any]) -> str:
        activation = {"args": celpy.json_to_cel(args), "tool": celpy.json_to_cel(tool)}
        for program, action in compiled.get(tool, []):
            if program is None:
                return action
            try:
                result = program.evaluate(activation)
            except Exception:
                return "require_approval" if action != "allow" else "deny"
            if isinstance(result, Exception):
                return "require_approval" if action != "allow" else "deny"
            if bool(result):
                return action
        return "deny"

    done = 0
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    for tool, args in calls:
        t0 = time.perf_counter_ns()
        decide(tool, args)
        latencies.append((time.perf_counter_ns() - t0) / 1000)
        done += 1
        if time.perf_counter() > deadline:
            break
    rate = done / (time.perf_counter() - start)
    actions = [decide(tool, args) for tool, args in calls[:500]]
    return rate, latencies, actions


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    text, rules_by_tool = build_policy_text()
    calls = build_calls(50_000)
    rules = sum(len(r) for _, r in rules_by_tool)
    print(f"policy: {TOOLS} tools, {rules} rules ({rules - TOOLS} with CEL conditions); {len(calls)} distinct calls")
    ours, our_lat, our_actions = run_ours(text, calls, seconds=8.0)
    base, base_lat, base_actions = run_baseline(rules_by_tool, calls, seconds=15.0)
    agree = sum(a == b for a, b in zip(our_actions, base_actions, strict=True))
    print(f"ours:     {ours:12,.0f} decisions/s  p50 {pct(our_lat, 0.5):7.2f} us  p99 {pct(our_lat, 0.99):7.2f} us")
    print(
        f"baseline: {base:12,.0f} decisions/s  p50 {pct(base_lat, 0.5):7.2f} us  p99 {pct(base_lat, 0.99):7.2f} us"
        "  (cel-python)"
    )
    print(f"same decision on {agree}/{len(our_actions)} sampled calls; mean us ours {statistics.mean(our_lat):.2f}")
    print(f"RESULT decisions_per_s={ours:.0f} baseline_per_s={base:.0f} ratio={ours / base:.1f}")


if __name__ == "__main__":
    main()
