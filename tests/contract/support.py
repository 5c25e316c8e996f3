"""A policy for the contract tests: `deploy` needs alice's approval."""

POLICY = """
version: "1"
approval_policies:
  - {name: ops, approvers: [alice@acme.test], timeout: 1h}
tools:
  - {name: deploy, action: require_approval, approval_policy: ops}
"""
