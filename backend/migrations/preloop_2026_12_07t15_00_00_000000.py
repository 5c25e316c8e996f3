"""The chain head keeps the hash its latest append started from (`audit_head.prev_hash`).

A one-statement append on PostgreSQL locks and moves the head in one `INSERT … ON CONFLICT DO UPDATE`
(no `SELECT … FOR UPDATE`, whose re-check of a row moved since the statement's snapshot initialised the
whole statement's plan again) and chains its events from the head's `RETURNING`, which can only show the
moved row: the hash it moved from has to be a column. Existing heads get it at their next append.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-07T15:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "audit_head.prev_hash"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="preloop", description=DESCRIPTION)
    manager.add_column(
        table_class_name="AuditHead",
        tablename="audit_head",
        column_name="prev_hash",
        db_column_name="prev_hash",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": "",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )
    return manager
