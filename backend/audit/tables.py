"""The append-only, hash-chained audit log (one chain per organization)."""

from piccolo.columns import JSONB, UUID, BigInt, Text, Timestamptz, Varchar
from piccolo.table import Table


class AuditEvent(Table, tablename="audit_event"):
    id = UUID(primary_key=True)
    # No foreign key: the log must outlive anything it mentions.
    org_id = Varchar(length=36, index=True)
    seq = BigInt()
    # "<org>:<seq>", unique: two writers can never both append position N.
    chain_pos = Varchar(length=80, unique=True)
    kind = Varchar(length=60, index=True)
    actor_type = Varchar(length=20)
    actor_id = Varchar(length=64, default="")
    actor_label = Varchar(length=320, default="")
    subject_type = Varchar(length=40, default="")
    subject_id = Varchar(length=64, default="", index=True)
    data = JSONB(default={})
    created_at = Timestamptz(index=True)
    prev_hash = Varchar(length=64)
    hash = Varchar(length=64)
    # Client-made id for idempotent ingestion (gateway spool resends); null for hub events.
    external_id = Varchar(length=80, null=True, default=None, unique=True)
    note = Text(default="")


class AuditHead(Table, tablename="audit_head"):
    """The newest event of each org's chain, moved with every append under the chain lock.

    Walking the chain finds altered and missing events; comparing its end with this row also
    finds events removed from the end.
    """

    org_id = Varchar(length=36, unique=True)
    seq = BigInt(default=0)
    hash = Varchar(length=64)
    # The hash the latest append started from (its first event's `prev_hash`): a one-statement append
    # moves the head first and then chains its events from it (`service._advance_head_sql`).
    prev_hash = Varchar(length=64, default="")
    updated_at = Timestamptz()
