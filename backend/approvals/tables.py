"""Approval requests, votes and time-boxed grants."""

from piccolo.columns import (
    JSONB,
    UUID,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.table import Table

from backend.accounts.tables import ApiKey, Organization, User

STATUSES = ("pending", "approved", "declined", "expired", "cancelled", "executing", "executed", "failed")


class ApprovalRequest(Table, tablename="approval_request"):
    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    status = Varchar(length=20, default="pending", index=True)
    tool = Varchar(length=300, index=True)
    server = Varchar(length=200, default="")
    arguments = JSONB(default={})
    arguments_hash = Varchar(length=64, index=True)
    agent_key = ForeignKey(references=ApiKey, null=True)
    agent_name = Varchar(length=200, default="")
    requester = ForeignKey(references=User, null=True)
    justification = Text(null=True, default=None)
    policy_version = Integer(null=True, default=None)
    rule = JSONB(default={})
    approval_policy = JSONB(default={})
    risk = Varchar(length=20, null=True, default=None)
    reason = Text(default="")
    created_at = Timestamptz(index=True)
    expires_at = Timestamptz(null=True, default=None, index=True)
    escalation_level = Integer(default=0)
    next_escalation_at = Timestamptz(null=True, default=None, index=True)
    decided_at = Timestamptz(null=True, default=None)
    outcome = JSONB(null=True, default=None)
    grant_seconds = Integer(default=0)
    executed_at = Timestamptz(null=True, default=None)
    execution = JSONB(null=True, default=None)
    # The upstream tool's input schema as the gateway saw it, so approvers see the defaults that will apply.
    input_schema = JSONB(null=True, default=None)
    # One more with every vote: a vote written in one statement checks it is unchanged since it read the
    # request and its votes (`flows._vote_in_sql`).
    vote_version = Integer(default=0)


class Vote(Table, tablename="vote"):
    id = UUID(primary_key=True)
    request = ForeignKey(references=ApprovalRequest, null=False, index=True)
    user = ForeignKey(references=User, null=False)
    # "<request id>:<user id>", unique: one vote per user per request, enforced by the database.
    request_user = Varchar(length=100, unique=True)
    decision = Varchar(length=10)
    reason = Text(null=True, default=None)
    channel = Varchar(length=20, default="api")
    created_at = Timestamptz()
    # The passkey step-up that confirmed this vote (authenticator data, client data, signature, …).
    assertion = JSONB(null=True, default=None)


class Grant(Table, tablename="approval_grant"):
    """Lets identical calls (agent key, tool, server, arguments hash) through until `expires_at`."""

    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    request = ForeignKey(references=ApprovalRequest, null=False)
    agent_key = ForeignKey(references=ApiKey, null=True)
    tool = Varchar(length=300)
    server = Varchar(length=200, default="")
    arguments_hash = Varchar(length=64, index=True)
    granted_by = ForeignKey(references=User, null=True)
    created_at = Timestamptz()
    expires_at = Timestamptz(index=True)
    revoked_at = Timestamptz(null=True, default=None)
    uses = Integer(default=0)
