"""The single Piccolo app: every table of every domain, one migration history."""

from pathlib import Path

from piccolo.conf.apps import AppConfig

from backend.accounts.tables import (
    ApiKey,
    Organization,
    PushSubscription,
    RecoveryCode,
    Team,
    TeamMembership,
    TotpFactor,
    User,
    UserInvite,
    UserSession,
    WebAuthnCredential,
)
from backend.approvals.idempotency import IdempotentAnswer
from backend.approvals.tables import ApprovalRequest, Grant, Vote
from backend.audit.tables import AuditEvent, AuditHead
from backend.notifications.chat_tables import ChatActionToken, ChatComment, ChatLink, ChatLinkToken, ChatPost
from backend.notifications.tables import (
    ChannelSetting,
    EmailActionToken,
    HubKey,
    NotificationAttempt,
    NotificationDelivery,
    NotificationPreference,
)
from backend.policy_store.tables import PolicyVersion

ALL_TABLES = [
    IdempotentAnswer,
    Organization,
    User,
    Team,
    TeamMembership,
    ApiKey,
    UserSession,
    UserInvite,
    PushSubscription,
    WebAuthnCredential,
    TotpFactor,
    RecoveryCode,
    PolicyVersion,
    ApprovalRequest,
    Vote,
    Grant,
    NotificationDelivery,
    NotificationAttempt,
    ChannelSetting,
    NotificationPreference,
    EmailActionToken,
    HubKey,
    ChatPost,
    ChatComment,
    ChatActionToken,
    ChatLink,
    ChatLinkToken,
    AuditEvent,
    AuditHead,
]

APP_CONFIG = AppConfig(
    app_name="preloop",
    migrations_folder_path=str(Path(__file__).parent / "migrations"),
    table_classes=ALL_TABLES,
    migration_dependencies=[],
    commands=[],
)
