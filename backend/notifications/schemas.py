"""Request and response shapes of the notification endpoints."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

# Bounds of the text people send here (over them: 400 naming the field, see docs/security.md).
Url = Annotated[str, msgspec.Meta(max_length=2000)]
Address = Annotated[str, msgspec.Meta(max_length=320)]
Secret = Annotated[str, msgspec.Meta(max_length=500)]
Word = Annotated[str, msgspec.Meta(max_length=64)]


class Attempt(msgspec.Struct):
    number: int
    status: str
    error: str | None
    detail: str | None
    started_at: str | None
    sent_at: str | None


class Delivery(msgspec.Struct):
    id: str
    user_id: str
    email: str
    channel: str
    event: str
    status: str
    escalation_level: int
    attempts: int
    last_error: str | None
    created_at: str | None
    sent_at: str | None
    history: list[Attempt] = []


class ChannelInfo(msgspec.Struct):
    kind: str
    enabled: bool
    configured: bool
    source: str
    settings: dict[str, Any]
    secret_set: bool


class ChannelBody(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = True
    smtp_url: Url | None = None
    """email: smtp://user:pass@host:587?starttls=true or smtps://user:pass@host:465 (stored encrypted)."""
    sender: Address | None = msgspec.field(default=None, name="from")
    """email: the From address."""
    url: Url | None = None
    """webhook: where events are POSTed."""
    secret: Secret | None = None
    """webhook: the HMAC key of `Preloop-Signature` (stored encrypted, never returned)."""
    subject: Address | None = None
    """push: the VAPID `sub` claim, mailto:… or https://…"""
    channel: str | None = None
    """slack, mattermost: the channel id messages are posted to."""
    bot_token: str | None = None
    """slack: the bot token, xoxb-… (stored encrypted, never returned)."""
    signing_secret: str | None = None
    """slack: the app's signing secret that callbacks are verified with (stored encrypted, never returned)."""
    token: str | None = None
    """mattermost: the bot's access token (stored encrypted, never returned)."""

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"enabled": self.enabled}
        for name, value in (
            ("smtp_url", self.smtp_url),
            ("from", self.sender),
            ("url", self.url),
            ("secret", self.secret),
            ("subject", self.subject),
            ("channel", self.channel),
            ("bot_token", self.bot_token),
            ("signing_secret", self.signing_secret),
            ("token", self.token),
        ):
            if value is not None:
                body[name] = value
        return body


class TestResult(msgspec.Struct):
    kind: str
    ok: bool
    answer: str
    recipient: str


class QuietHours(msgspec.Struct):
    start: Word
    end: Word


class Preferences(msgspec.Struct):
    channels: Annotated[list[Word], msgspec.Meta(max_length=20)] | None = None
    """Channels you want (of those a policy names); null means all of them."""
    quiet_hours: QuietHours | None = None
    """No messages between start and end (HH:MM in `timezone`), except for critical-risk requests."""
    timezone: Word = "UTC"


class VapidKey(msgspec.Struct):
    public_key: str


class SubscriptionKeys(msgspec.Struct):
    p256dh: Annotated[str, msgspec.Meta(max_length=200)]
    auth: Annotated[str, msgspec.Meta(max_length=100)]


class SubscriptionBody(msgspec.Struct):
    """The browser's `PushSubscription.toJSON()`."""

    endpoint: Url
    keys: SubscriptionKeys
    expirationTime: float | None = None


class Unsubscribe(msgspec.Struct):
    endpoint: Url


class Subscription(msgspec.Struct):
    id: str
    endpoint: str


class Comment(msgspec.Struct):
    """One entry of a request's discussion: a reply in its chat thread, or a comment written in Preloop."""

    id: str
    source: str
    """slack or mattermost (a chat thread's reply); app, console or api (written in Preloop)"""
    author: str
    """the Preloop user's email (a chat user who does not map to one: `slack:<user id>`)"""
    text: str
    created_at: str
class NewComment(msgspec.Struct, forbid_unknown_fields=True):
    """A comment to add to a request's discussion."""

    text: str
    """1 to 4000 characters; shown as plain text (never as HTML)"""


class RecentAttempt(msgspec.Struct):
    """One try of a delivery on this channel, newest first."""

    delivery_id: str
    request_id: str
    email: str
    event: str
    number: int
    status: str
    """sent, failed, skipped, retrying (failed, will be tried again) or deferred (quiet hours)."""
    error: str | None
    detail: str | None
    started_at: str | None
    sent_at: str | None


class ChannelDeliveries(msgspec.Struct):
    """Recent deliveries on one channel of the organization: counts over a window and the last attempts."""

    kind: str
    window_hours: int
    counts: dict[str, int]
    """Deliveries created in the window, by their current status (queued, sending, sent, failed, skipped)."""
    attempts: list[RecentAttempt]


class MattermostPost(msgspec.Struct):
    """The clicked post as it should now read: the outcome, or the request with fresh buttons."""

    message: str
    props: dict[str, Any]
    """Mattermost's post props: the message attachment (and its buttons, while the request is pending)."""


class MattermostActionAnswer(msgspec.Struct):
    """Mattermost's integration response to a button click; `{}` when a decline-reason dialog opened."""

    update: MattermostPost | msgspec.UnsetType = msgspec.UNSET
    """Replaces the clicked post, after a recorded vote."""
    ephemeral_text: str | msgspec.UnsetType = msgspec.UNSET
    """Shown only to the person who clicked: the vote's progress, or why it was not recorded."""


class MattermostDialogAnswer(msgspec.Struct):
    """Mattermost's dialog submission response; `{}` closes the dialog."""

    errors: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    """Per-field errors: the dialog stays open (a missing reason)."""
    error: str | msgspec.UnsetType = msgspec.UNSET
    """Why the vote was not recorded, shown in the dialog."""
