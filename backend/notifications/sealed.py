"""Secrets at rest (SMTP passwords, webhook secrets, the VAPID private key), sealed with the hub's key."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from backend.errors import PreloopError


class SealBroken(PreloopError):
    """A stored secret cannot be opened: the hub's secret key changed since it was saved."""

    status = 500
    code = "secret_unreadable"


def _fernet(secret_key: str) -> Fernet:
    digest = hashlib.sha256(b"preloop/notifications/v1\x00" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(secret_key: str, plaintext: str) -> str:
    return _fernet(secret_key).encrypt(plaintext.encode()).decode()


def unseal(secret_key: str, sealed: str) -> str:
    try:
        return _fernet(secret_key).decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise SealBroken(
            "a stored channel secret cannot be decrypted: PRELOOP_SECRET_KEY changed since it was saved",
            detail={"hint": "restore the previous PRELOOP_SECRET_KEY or enter the channel's secret again"},
        ) from None
