"""Web Push plumbing: the hub's VAPID key pair (made on first use, private half sealed) and subscriptions."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02

from backend.accounts.tables import PushSubscription
from backend.errors import NotFound, ValidationFailed
from backend.notifications.batching import Batch, keyed
from backend.notifications.sealed import seal, unseal
from backend.notifications.tables import HubKey

if TYPE_CHECKING:
    from backend.hub import Hub

VAPID_NAME = "vapid"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class VapidKeys:
    public_key: str  # base64url uncompressed P-256 point (applicationServerKey)
    signer: Vapid02


_OPENED: dict[tuple[str, str], VapidKeys] = {}
"""(hub secret key, sealed private key) → opened keys: parsed once per process, not per push."""
_LAST: dict[str, tuple[float, VapidKeys]] = {}
KEY_RECHECK_SECONDS = 5.0
"""A fan-out reads the stored key once; a key replaced in the database is seen within this long."""


async def vapid_keys(hub: Hub) -> VapidKeys:
    """The hub's VAPID keys; generated and stored on first use (the first start of the hub)."""
    where = f"{hub.settings.database_url}|{hub.settings.secret_key()}"
    remembered = _LAST.get(where)
    if remembered is not None and time.monotonic() - remembered[0] < KEY_RECHECK_SECONDS:
        return remembered[1]
    row = await HubKey.select().where(HubKey.name == VAPID_NAME).first()
    if row is not None and (hub.settings.secret_key(), row["private"]) in _OPENED:
        keys = _OPENED[(hub.settings.secret_key(), row["private"])]
        _LAST[where] = (time.monotonic(), keys)
        return keys
    if row is None:
        vapid = Vapid02()
        vapid.generate_keys()
        public = b64url(
            vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        sealed = seal(hub.settings.secret_key(), vapid.private_pem().decode())
        await HubKey.insert(
            HubKey(id=uuid.uuid4(), name=VAPID_NAME, public=public, private=sealed, created_at=datetime.now(UTC))
        ).on_conflict(target=HubKey.name, action="DO NOTHING")
        row = await HubKey.select().where(HubKey.name == VAPID_NAME).first()
        assert row is not None
    signer = Vapid02.from_pem(unseal(hub.settings.secret_key(), row["private"]).encode())
    keys = _OPENED[(hub.settings.secret_key(), row["private"])] = VapidKeys(row["public"], signer)
    _LAST[where] = (time.monotonic(), keys)
    return keys


def _b64_of_length(value: Any, size: int) -> bool:
    try:
        return isinstance(value, str) and len(b64url_decode(value)) == size
    except ValueError:
        return False


def _check_subscription(body: dict[str, Any]) -> tuple[str, str, str]:
    endpoint = body.get("endpoint")
    raw_keys = body.get("keys")
    keys: dict[str, Any] = raw_keys if isinstance(raw_keys, dict) else {}
    if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in {"http", "https"} or len(endpoint) > 2000:
        raise ValidationFailed(
            "endpoint must be the push service URL from PushSubscription.toJSON()", detail={"field": "endpoint"}
        )
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not _b64_of_length(p256dh, 65):
        raise ValidationFailed(
            "keys.p256dh must be a base64url P-256 public key (65 bytes)", detail={"field": "keys.p256dh"}
        )
    if not _b64_of_length(auth, 16):
        raise ValidationFailed("keys.auth must be a base64url 16-byte secret", detail={"field": "keys.auth"})
    return str(endpoint), str(p256dh), str(auth)


async def subscribe(user_id: Any, body: dict[str, Any], user_agent: str = "") -> dict[str, Any]:
    endpoint, p256dh, auth = _check_subscription(body)
    existing = await PushSubscription.select(PushSubscription.id).where(PushSubscription.endpoint == endpoint).first()
    if existing is not None:  # same browser, maybe a new user on it: the latest sign-in owns it
        await PushSubscription.update(
            {PushSubscription.user: user_id, PushSubscription.p256dh: p256dh, PushSubscription.auth: auth}
        ).where(PushSubscription.id == existing["id"])
        sub_id = existing["id"]
    else:
        sub_id = uuid.uuid4()
        await PushSubscription.insert(
            PushSubscription(
                id=sub_id,
                user=user_id,
                endpoint=endpoint,
                p256dh=p256dh,
                auth=auth,
                user_agent=user_agent[:500],
                created_at=datetime.now(UTC),
            )
        ).on_conflict(target=PushSubscription.endpoint, action="DO NOTHING")
    return {"id": str(sub_id), "endpoint": endpoint}


async def unsubscribe(user_id: Any, endpoint: str) -> None:
    gone = (
        await PushSubscription.delete()
        .where((PushSubscription.user == user_id) & (PushSubscription.endpoint == endpoint))
        .returning(PushSubscription.id)
    )
    if not gone:
        raise NotFound("no push subscription of yours has that endpoint")


async def subscriptions_of_many(user_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every device of many people in one query, by user id (as text)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for row in await PushSubscription.select().where(PushSubscription.user.is_in(user_ids)):
        found.setdefault(str(row["user"]), []).append(row)
    return found


DEVICES: Batch[str, list[dict[str, Any]]] = Batch(keyed(subscriptions_of_many, []))
"""A fan-out's push jobs read their devices together: one query per batch of concurrent jobs."""


async def forget(subscription_id: Any) -> None:
    await PushSubscription.delete().where(PushSubscription.id == subscription_id)
