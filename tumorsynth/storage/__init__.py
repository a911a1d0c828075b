"""Object storage: one ``ObjectStore`` protocol, an S3 implementation and a local-folder one."""

from __future__ import annotations

import secrets

from ..settings import Settings
from .base import ObjectInfo, ObjectStore
from .local import LocalStore
from .s3 import S3Store

# Unset signing key: links made by this process verify only in this process (and die with it).
_PROCESS_SIGNING_KEY = secrets.token_hex(32)

__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "S3Store", "make_store"]


def make_store(settings: Settings) -> ObjectStore:
    """S3 when an endpoint is configured, else a folder (``storage_dir``) with links signed by this service."""
    if settings.s3_endpoint:
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            region=settings.s3_region,
            secure=settings.s3_secure,
        )
    key = settings.url_signing_key or _PROCESS_SIGNING_KEY
    return LocalStore(settings.storage_dir, base_url=settings.public_url, signing_key=key.encode())
