"""Immutable policy versions; exactly one is active per organization."""

from piccolo.columns import UUID, Boolean, ForeignKey, Integer, Text, Timestamptz, Varchar
from piccolo.table import Table

from backend.accounts.tables import Organization, User


class PolicyVersion(Table, tablename="policy_version"):
    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    version = Integer()
    org_version = Varchar(length=100, unique=True)
    source = Text()
    sha256 = Varchar(length=64)
    message = Text(default="")
    is_active = Boolean(default=False, index=True)
    created_by = ForeignKey(references=User, null=True)
    created_by_label = Varchar(length=320, default="")
    created_at = Timestamptz()
    rolled_back_from = Integer(null=True, default=None)
