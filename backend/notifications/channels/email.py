"""Email through SMTP (aiosmtplib): HTML + plain text, Approve/Decline links to a confirmation page."""

from __future__ import annotations

import asyncio
import weakref
from email.header import Header
from email.message import Message as MailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, parseaddr
from typing import ClassVar
from urllib.parse import urlsplit

import aiosmtplib

from backend.notifications import links
from backend.notifications.channel_settings import smtp_options
from backend.notifications.channels import Answer, ChannelError, Message, Target
from backend.notifications.render import render

SEND_TIMEOUT = 20.0


def _header(value: str) -> str:
    return value if value.isascii() else Header(value, "utf-8").encode()


def _address(value: str) -> str:
    if value.isascii():
        return value
    name, address = parseaddr(value)
    return formataddr((name, address), charset="utf-8")


def build(message: Message, target: Target, actions: dict[str, str]) -> MIMEMultipart:
    """The mail, built with the compat32 MIME classes: the modern `EmailMessage` parses every
    header it is given, which cost ~80% of the CPU a fan-out spent per mail."""
    mail = MIMEMultipart("alternative")
    mail["Subject"] = _header(message.title)
    mail["From"] = _address(str(target.config.get("from") or "preloop@localhost"))
    mail["To"] = target.recipient.email
    mail["Date"] = formatdate(localtime=False)
    # Stable per delivery: a retry after a lost acknowledgement is recognisable as the same mail.
    mail["Message-ID"] = f"<{message.delivery_id}@preloop>"
    mail["X-Preloop-Delivery"] = message.delivery_id
    mail["X-Preloop-Request"] = message.request_id
    mail["X-Preloop-Event"] = message.event
    if message.critical and message.status == "pending":
        mail["Importance"] = "high"
    mail.attach(MIMEText(render("email.txt", m=message, actions=actions), "plain", "utf-8"))
    mail.attach(MIMEText(render("email.html", m=message, actions=actions), "html", "utf-8"))
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
            errors, answer = await _pool(target).send(mail)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise ChannelError(f"the mail server refused {target.recipient.email}: {exc}", permanent=True) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ChannelError(f"mail server: {type(exc).__name__}: {exc}") from exc
        if errors:
            raise ChannelError(f"the mail server refused {target.recipient.email}: {errors}", permanent=True)
        return Answer(answer.strip() or "accepted")


POOL_SIZE = 8
"""Connections one worker keeps open per mail server: a fan-out's mails share them in turn."""
IDLE_SECONDS = 5.0
"""A connection idle longer than this is closed, not reused (servers drop idle clients)."""


class _Pool:
    """A few open SMTP connections to one server, reused by one event loop's sends.

    A fan-out to hundreds of people otherwise pays a TCP connect, EHLO (and TLS, AUTH) per mail.
    A connection is used by one send at a time; one that fails is dropped, never retried here:
    the delivery engine retries the delivery, so a mail is never sent twice by this layer.
    """

    def __init__(self, options: dict[str, object], helo: str) -> None:
        self.options = options
        self.helo = helo
        self.idle: list[tuple[float, aiosmtplib.SMTP]] = []
        self.slots = asyncio.Semaphore(POOL_SIZE)

    async def _connection(self) -> aiosmtplib.SMTP:
        clock = asyncio.get_running_loop().time()
        while self.idle:
            since, client = self.idle.pop()
            if clock - since < IDLE_SECONDS and client.is_connected:
                return client
            client.close()
        client = aiosmtplib.SMTP(timeout=SEND_TIMEOUT, local_hostname=self.helo, **self.options)  # type: ignore[arg-type]
        await client.connect()
        return client

    async def send(self, mail: MailMessage) -> tuple[dict[str, object], str]:
        async with self.slots:
            client = await self._connection()
            try:
                errors, answer = await client.send_message(mail)
            except BaseException:
                client.close()
                raise
            self.idle.append((asyncio.get_running_loop().time(), client))
            return dict(errors), answer


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Pool]] = weakref.WeakKeyDictionary()


def _pool(target: Target) -> _Pool:
    assert target.secret
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    helo = _helo_name(target.public_url)
    key = (target.secret, helo)
    if key not in pools:
        pools[key] = _Pool(smtp_options(target.secret), helo)
    return pools[key]


def _helo_name(public_url: str) -> str:
    # Named here: aiosmtplib would otherwise call socket.getfqdn() (a DNS lookup) for every mail.
    return urlsplit(public_url).hostname or "localhost"


def _deadline(message: Message) -> object:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(message.deadline_epoch, UTC) if message.deadline_epoch else None


CHANNEL = EmailChannel()


def close_pools() -> None:
    """Close this loop's pooled SMTP connections (worker shutdown)."""
    try:
        pools = _POOLS.pop(asyncio.get_running_loop(), {})
    except RuntimeError:
        return
    for pool in pools.values():
        for _, client in pool.idle:
            client.close()
        pool.idle.clear()
