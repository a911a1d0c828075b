"""HMAC-signed download links for the local-folder store: the signature is the authorisation for one object."""

from __future__ import annotations

import hashlib
import hmac
import time

from ..errors import Unauthorized


def sign(key: str, expires_at: int, secret: bytes) -> str:
    if not secret:
        raise ValueError("a signing secret is required")
    message = f"{key}\n{int(expires_at)}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify(key: str, expires_at: int, signature: str, secret: bytes | None, now: float | None = None) -> None:
    """Raise ``Unauthorized`` (code ``bad_signature`` or ``url_expired``) unless the link is genuine and current.

    The signature is checked first, so only the holder of a genuine link learns that it expired.
    """
    if not secret:
        raise Unauthorized("this store does not serve signed links", code="bad_signature")
    expected = sign(key, expires_at, secret)
    if not hmac.compare_digest(expected.encode(), str(signature).encode("utf-8", "replace")):
        raise Unauthorized("the link's signature does not match; ask the API for a fresh link", code="bad_signature")
    if (time.time() if now is None else now) > int(expires_at):
        raise Unauthorized("the link has expired; ask the API for a fresh link", code="url_expired")
