"""Email through SMTP (aiosmtplib): HTML + plain text, Approve/Decline links to a confirmation page."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate
from typing import ClassVar
from urllib.parse import urlsplit

import aiosmtplib

from backend.notifications import links
from backend.notifications.channel_settings import smtp_options
from backend.notifications.channels import Answer, ChannelError, Message, Target
from backend.notifications.render import render

SEND_TIMEOUT = 20.0


def build(message: Message, target: Target, actions: dict[str, str]) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = message.title
    mail["From"] = str(target.config.get("from") or "preloop@localhost")
    mail["To"] = target.recipient.email
    mail["Date"] = formatdate(localtime=False)
    # Stable per delivery: a retry after a lost acknowledgement is recognisable as the same mail.
    mail["Message-ID"] = f"<{message.delivery_id}@preloop>"
    mail["X-Preloop-Delivery"] = message.delivery_id
    mail["X-Preloop-Request"] = message.request_id
    mail["X-Preloop-Event"] = message.event
    if message.critical and message.status == "pending":
        mail["Importance"] = "high"
    mail.set_content(render("email.txt", m=message, actions=actions))
    mail.add_alternative(render("email.html", m=message, actions=actions), subtype="html")
    return mail


class EmailChannel:
    kind: ClassVar[str] = "email"

    async def send(self, message: Message, target: Target) -> Answer:
        if not target.secret:
            return Answer("email is not configured: set PRELOOP_SMTP_URL or PUT /api/v1/channels/email", skipped=True)
        actions: dict[str, str] = {}
        actionable = message.status == "pending" and message.event in {"requested", "escalated", "reminder"}
        if actionable and not message.passkey_required:
            row = {"id": message.request_id, "expires_at": _deadline(message)}
            actions = await links.issue(row, target.recipient.user_id, target.public_url)
        mail = build(message, target, actions)
        try:
            errors, answer = await aiosmtplib.send(
                mail, timeout=SEND_TIMEOUT, local_hostname=_helo_name(target.public_url), **smtp_options(target.secret)
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise ChannelError(f"the mail server refused {target.recipient.email}: {exc}", permanent=True) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ChannelError(f"mail server: {type(exc).__name__}: {exc}") from exc
        if errors:
            raise ChannelError(f"the mail server refused {target.recipient.email}: {errors}", permanent=True)
        return Answer(answer.strip() or "accepted")


def _helo_name(public_url: str) -> str:
    # Named here: aiosmtplib would otherwise call socket.getfqdn() (a DNS lookup) for every mail.
    return urlsplit(public_url).hostname or "localhost"


def _deadline(message: Message) -> object:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(message.deadline_epoch, UTC) if message.deadline_epoch else None


CHANNEL = EmailChannel()
