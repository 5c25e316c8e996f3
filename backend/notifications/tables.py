"""One row per (request, approver, channel) to deliver; channel workers drain them."""

from piccolo.columns import JSONB, UUID, ForeignKey, Integer, Text, Timestamptz, Varchar
from piccolo.table import Table

from backend.accounts.tables import Organization, User
from backend.approvals.tables import ApprovalRequest


class NotificationDelivery(Table, tablename="notification_delivery"):
    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    request = ForeignKey(references=ApprovalRequest, null=False)
    user = ForeignKey(references=User, null=False)
    channel = Varchar(length=20)
    # "<request>:<user>:<channel>:<escalation level>": queuing the same delivery twice is a no-op.
    dedupe_key = Varchar(length=200, unique=True)
    escalation_level = Integer(default=0)
    status = Varchar(length=20, default="queued", index=True)
    attempts = Integer(default=0)
    last_error = Text(null=True, default=None)
    payload = JSONB(default={})
    created_at = Timestamptz()
    sent_at = Timestamptz(null=True, default=None)
