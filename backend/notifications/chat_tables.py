"""Chat (Slack, Mattermost): the one post per request, its thread's discussion, Mattermost button tokens."""

from piccolo.columns import UUID, ForeignKey, Text, Timestamptz, Varchar
from piccolo.table import Table

from backend.accounts.tables import Organization, User
from backend.approvals.tables import ApprovalRequest


class ChatPost(Table, tablename="chat_post"):
    """The message a request got in an organization's chat channel (Slack `ts`, Mattermost post id)."""

    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    request = ForeignKey(references=ApprovalRequest, null=False)
    kind = Varchar(length=20)
    # "<request id>:<kind>", unique: a request is posted once per chat, whatever retries happen.
    request_kind = Varchar(length=100, unique=True)
    channel = Varchar(length=100)
    post_id = Varchar(length=100, index=True)
    created_at = Timestamptz()


class ChatComment(Table, tablename="chat_comment"):
    """A reply in a request's chat thread: the request's discussion."""

    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    request = ForeignKey(references=ApprovalRequest, null=False, index=True)
    kind = Varchar(length=20)
    # "<kind>:<channel>:<message ts or id>", unique: an event delivered twice is stored once.
    external_id = Varchar(length=200, unique=True)
    author = Varchar(length=320)
    chat_user = Varchar(length=100)
    text = Text()
    created_at = Timestamptz()


class ChatActionToken(Table, tablename="chat_action_token"):
    """A Mattermost button's single-use token, bound to (request, decision, post); only its SHA-256 is kept."""

    id = UUID(primary_key=True)
    token_hash = Varchar(length=64, unique=True)
    request = ForeignKey(references=ApprovalRequest, null=False, index=True)
    decision = Varchar(length=10)
    post_id = Varchar(length=100, null=True, default=None)
    expires_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    # Set on a Mattermost dialog's token: only this chat user's submission may spend it.
    chat_user = Varchar(length=100, null=True, default=None)


class ChatLink(Table, tablename="chat_link"):
    """A chat account linked by its owner in the app: its clicks count as this Preloop user's votes."""

    id = UUID(primary_key=True)
    org = ForeignKey(references=Organization, null=False)
    user = ForeignKey(references=User, null=False)
    kind = Varchar(length=20)
    team = Varchar(length=100)
    chat_user = Varchar(length=100)
    chat_name = Varchar(length=100, default="")  # as the chat showed it when the link was offered
    # "<org>:<kind>:<team>:<chat user>", unique: a chat account stands for one Preloop user at a time.
    account = Varchar(length=320, unique=True)
    created_at = Timestamptz()


class ChatLinkToken(Table, tablename="chat_link_token"):
    """The one-time link offered (ephemerally) to an unmapped chat user; only its SHA-256 is kept."""

    id = UUID(primary_key=True)
    token_hash = Varchar(length=64, unique=True)
    org = ForeignKey(references=Organization, null=False)
    kind = Varchar(length=20)
    team = Varchar(length=100)
    chat_user = Varchar(length=100)
    chat_name = Varchar(length=100, default="")
    expires_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
