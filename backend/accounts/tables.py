"""Organizations, people, teams, API keys, sessions and approver devices."""

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    Boolean,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.table import Table

ROLES = ("admin", "approver", "viewer")
KEY_SCOPES = ("agent", "approver", "admin")


class Organization(Table, tablename="organization"):
    id = UUID(primary_key=True)
    name = Varchar(length=200)
    slug = Varchar(length=100, unique=True)
    created_at = Timestamptz()


class User(Table, tablename="app_user"):
    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    email = Varchar(length=320, index=True)
    # `org_email` is "<org id>:<lower email>"; unique, so one email per org.
    org_email = Varchar(length=400, unique=True)
    name = Varchar(length=200, default="")
    role = Varchar(length=20, default="approver")
    password_hash = Text(null=True, default=None)
    totp_secret = Text(null=True, default=None)
    is_active = Boolean(default=True)
    created_at = Timestamptz()


class Team(Table, tablename="team"):
    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    name = Varchar(length=100)
    org_name = Varchar(length=200, unique=True)
    created_at = Timestamptz()


class TeamMembership(Table, tablename="team_membership"):
    id = UUID(primary_key=True)
    team = ForeignKey(references=Team, null=False)
    user = ForeignKey(references=User, null=False)
    team_user = Varchar(length=100, unique=True)
    created_at = Timestamptz()


class ApiKey(Table, tablename="api_key"):
    """A bearer token; only its SHA-256 is stored. `name` is the agent's name."""

    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    user = ForeignKey(references=User, null=False)
    name = Varchar(length=200)
    prefix = Varchar(length=20)
    token_hash = Varchar(length=64, unique=True)
    scope = Varchar(length=20, default="agent")
    labels = JSONB(default={})
    created_at = Timestamptz()
    last_used_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)


class UserSession(Table, tablename="user_session"):
    """A console/PWA login; the cookie carries the token, the row its SHA-256."""

    id = UUID(primary_key=True)
    user = ForeignKey(references=User, null=False)
    token_hash = Varchar(length=64, unique=True)
    created_at = Timestamptz()
    expires_at = Timestamptz()
    passkey_verified_at = Timestamptz(null=True, default=None)


class PushSubscription(Table, tablename="push_subscription"):
    id = UUID(primary_key=True)
    user = ForeignKey(references=User, null=False)
    endpoint = Text(unique=True)
    p256dh = Text()
    auth = Text()
    user_agent = Text(default="")
    created_at = Timestamptz()


class WebAuthnCredential(Table, tablename="webauthn_credential"):
    id = UUID(primary_key=True)
    user = ForeignKey(references=User, null=False)
    credential_id = Varchar(length=512, unique=True)
    public_key = Text()
    sign_count = Integer(default=0)
    transports = JSONB(default=[])
    name = Varchar(length=200, default="")
    created_at = Timestamptz()
    last_used_at = Timestamptz(null=True, default=None)


class TotpFactor(Table, tablename="totp_factor"):
    """A person's TOTP second factor (RFC 6238); usable once `confirmed_at` is set."""

    id = UUID(primary_key=True)
    user = ForeignKey(references=User, null=False, unique=True)
    secret = Text()
    # The last time step accepted: a code of that step or an earlier one is never accepted again.
    last_step = BigInt(default=0)
    created_at = Timestamptz()
    confirmed_at = Timestamptz(null=True, default=None)


class RecoveryCode(Table, tablename="recovery_code"):
    """One-time codes for when the TOTP device is lost; only their SHA-256 is stored."""

    id = UUID(primary_key=True)
    user = ForeignKey(references=User, null=False)
    code_hash = Varchar(length=64, unique=True)
    created_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)


class UserInvite(Table, tablename="user_invite"):
    """A one-time link to set a password (24 h, single use); only the token's SHA-256 is stored."""

    id = UUID(primary_key=True)
    user = ForeignKey(references=User, null=False)
    token_hash = Varchar(length=64, unique=True)
    created_at = Timestamptz()
    expires_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)
