"""Deliveries and their attempts, channel settings, personal preferences, email action tokens, hub keys."""

from piccolo.columns import JSONB, UUID, Boolean, ForeignKey, Integer, Text, Timestamptz, Varchar
from piccolo.table import Table

from backend.accounts.tables import Organization, User
from backend.approvals.tables import ApprovalRequest


class NotificationDelivery(Table, tablename="notification_delivery"):
    """One message to one person on one channel for one event of a request."""

    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    request = ForeignKey(references=ApprovalRequest, null=False, index=True)
    user = ForeignKey(references=User, null=False)
    channel = Varchar(length=20)
    # "<request>:<user>:<channel>:<event>": queuing the same delivery twice is a no-op.
    dedupe_key = Varchar(length=200, unique=True)
    escalation_level = Integer(default=0)
    # queued → sending → sent | failed | skipped; `sending` past `claimed_until` is taken again.
    status = Varchar(length=20, default="queued", index=True)
    attempts = Integer(default=0)
    last_error = Text(null=True, default=None)
    payload = JSONB(default={})
    created_at = Timestamptz()
    sent_at = Timestamptz(null=True, default=None)
    event = Varchar(length=30, default="requested")
    next_attempt_at = Timestamptz(null=True, default=None, index=True)
    claimed_until = Timestamptz(null=True, default=None)


class NotificationAttempt(Table, tablename="notification_attempt"):
    """Each try of a delivery: what the channel answered."""

    id = UUID(primary_key=True)
    delivery = ForeignKey(references=NotificationDelivery, null=False, index=True)
    number = Integer(default=1)
    status = Varchar(length=20)
    error = Text(null=True, default=None)
    detail = Text(null=True, default=None)
    started_at = Timestamptz()
    sent_at = Timestamptz(null=True, default=None)


class ChannelSetting(Table, tablename="channel_setting"):
    """An organization's settings for one channel kind; `secret` is encrypted with the hub's key."""

    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    kind = Varchar(length=20)
    # "<org id>:<kind>", unique: one row per org and kind.
    org_kind = Varchar(length=100, unique=True)
    enabled = Boolean(default=True)
    config = JSONB(default={})
    secret = Text(null=True, default=None)
    updated_at = Timestamptz()


class NotificationPreference(Table, tablename="notification_preference"):
    """One person's choices: channels they want, quiet hours in their timezone."""

    id = UUID(primary_key=True)
    user = ForeignKey(references=User, null=False, unique=True)
    channels = JSONB(null=True, default=None)
    quiet_start = Varchar(length=5, null=True, default=None)
    quiet_end = Varchar(length=5, null=True, default=None)
    timezone = Varchar(length=64, default="UTC")
    updated_at = Timestamptz()


class EmailActionToken(Table, tablename="email_action_token"):
    """A single-use Approve/Decline link; only the SHA-256 of its token is stored."""

    id = UUID(primary_key=True)
    token_hash = Varchar(length=64, unique=True)
    request = ForeignKey(references=ApprovalRequest, null=False)
    user = ForeignKey(references=User, null=False)
    decision = Varchar(length=10)
    expires_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()


class HubKey(Table, tablename="hub_key"):
    """Hub-wide key material (the VAPID key pair); `private` is encrypted with the hub's key."""

    id = UUID(primary_key=True)
    name = Varchar(length=50, unique=True)
    public = Text()
    private = Text()
    created_at = Timestamptz()
