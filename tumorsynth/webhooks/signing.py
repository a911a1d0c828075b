"""Standard Webhooks signatures (https://www.standardwebhooks.com): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with a ``whsec_<base64>`` secret."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def parse_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret; ValueError saying what is wrong otherwise."""
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret looks like 'whsec_' + the base64 of 32 random bytes")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("the part of a webhook secret after 'whsec_' must be base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret must hold 24 to 64 bytes (32 is usual)")
    return key


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(parse_secret(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
