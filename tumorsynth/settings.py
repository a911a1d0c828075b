"""The one Settings object: every knob is a ``TUMORSYNTH_*`` environment variable."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .pacs.destinations import Destination, check_uid_root

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SECRETS = {"minioadmin", "minio123", "changeme", "secret", "password", "admin"}
PLACEHOLDER = re.compile(r"change[-_ ]?me", re.IGNORECASE)  # .env.example's values say "change-me"
MIN_SECRET_CHARS = 16
DEFAULT_QUEUE = "gpu"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUMORSYNTH_", env_file=None, extra="ignore")

    # Broker and job store. None: `tumorsynth serve` starts an embedded Redis server and sets it.
    redis_url: str | None = None
    # A submission is acknowledged once its record and queue message are on this many replicas (Redis WAIT), else
    # 503. None: 1 behind Sentinel (sentinel://...), 0 for one Redis. The wait is bounded by the timeout.
    redis_ack_replicas: int | None = Field(None, ge=0, le=16)
    redis_ack_timeout_seconds: float = Field(1.0, gt=0, le=30)
    # How long one Redis command may wait in the API before the request is a 503 (a frozen or unreachable Redis).
    redis_timeout_seconds: float = Field(2.0, gt=0, le=30)
    # Open GET /v1/jobs/{id}/events streams per tenant in one API process; one more is a 429.
    max_event_streams_per_tenant: int = Field(20, ge=1, le=10_000)
    # Slow clients: a request's headers must arrive within header_timeout_seconds; its body may pause at most
    # body_idle_timeout_seconds and must be complete within body_timeout_seconds (408 otherwise). Connections beyond
    # max_connections are answered 503.
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    body_idle_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(900.0, gt=0, le=24 * 3600)
    max_connections: int = Field(1000, ge=1)
    # The embedded Redis's data folder (when no redis_url is set). None: "<storage_dir>-redis", beside storage_dir.
    redis_data_dir: Path | None = None
    # Object storage. No endpoint: a local folder (storage_dir) holds the objects.
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = Field(None, repr=False)
    s3_bucket: str = "tumorsynth"
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    storage_dir: Path = Path("var/storage")
    presign_expiry_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
    # Public base URL of the API, used for download links when objects live in a local folder.
    public_url: str = "http://127.0.0.1:8000"
    # Hex or any string; signs local download links. Generated per process when unset (links then die on restart).
    url_signing_key: str | None = Field(None, repr=False)

    # "tenantA:keyA,tenantB:keyB". Empty: loopback only, tenant "local".
    api_keys: str = Field("", repr=False)
    host: str = "127.0.0.1"
    port: int = 8000

    model_dir: Path = REPO_ROOT / "checkpoints"
    device: str = "auto"
    # Serving on the device (issue 15; workers/batching.py, models/precision.py). precision: auto = bf16 weights on
    # CUDA, fp32 elsewhere. Jobs of one model, sampler and steps share a batch of up to batch_max_samples samples
    # (fewer where GPU memory is short), waiting at most batch_max_wait_ms for partners; batch_invariant makes a job
    # bit-identical alone and batched on the CPU (slower decoding). output_writers: threads encoding and uploading.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    batch_max_samples: int = Field(8, ge=1)
    batch_max_wait_ms: float = Field(200.0, ge=0)
    batch_invariant: bool = False
    output_writers: int = Field(4, ge=1)

    # Upload limits: refused with a 4xx before anything is stored.
    max_request_bytes: int = 256 * 1024**2
    max_file_bytes: int = 128 * 1024**2
    max_decompressed_bytes: int = 1024 * 1024**2
    max_dim: int = 1024
    max_voxels: int = 64 * 1024**2

    # Queueing and reliability. The visibility timeout must exceed the longest job; leases make recovery fast.
    job_time_limit_seconds: int = 3 * 3600
    visibility_timeout_seconds: int = 6 * 3600
    lease_seconds: float = 20.0
    heartbeat_seconds: float = 3.0
    reaper_interval_seconds: float = 3.0
    max_attempts: int = 3
    # Queue per model family where it is not DEFAULT_QUEUE, e.g. {"stylegan2": "cpu"} (families: models/families.py).
    family_queues: dict[str, str] = {}
    idempotency_ttl_seconds: int = 24 * 3600
    # Per tenant, queued + running: jobs and work (num_samples × steps) beyond which a job submission is a 429.
    max_active_jobs_per_tenant: int = Field(100, ge=1)
    max_active_work_per_tenant: int = Field(256_000, ge=1)
    # A job whose outputs would need more memory than this (voxels × modalities × samples × 4 bytes) is a 422.
    max_job_output_bytes: int = Field(4 * 1024**3, ge=1)
    storage_retries: int = 4

    # Webhooks (Standard Webhooks signatures). Secrets are "whsec_<base64>"; a tenant's own secret wins over the
    # global one; a job may ask for a webhook only when its tenant has a secret.
    webhook_secret: str | None = Field(None, repr=False)
    webhook_tenant_secrets: str = Field("", repr=False)  # "tenantA:whsec_...,tenantB:whsec_..."
    webhook_allow_private_targets: bool = False  # loopback/private/link-local targets (tests, closed networks)
    webhook_max_attempts: int = Field(12, ge=1, le=50)
    webhook_backoff_seconds: float = Field(5.0, gt=0)  # doubled after each failed attempt, capped below
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0)
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_poll_seconds: float = Field(1.0, gt=0)

    # DICOM output: fresh UIDs under this organisation root (set your own; the default is pydicom's, whose UIDs are
    # for generated objects). PACS destinations per tenant, JSON: {"tenantA": {"kind": "dimse", "host": ...,
    # "port": 104, "called_ae": "PACS"}, "tenantB": {"kind": "stow-rs", "url": "https://.../dicom-web"}}.
    # Deliveries are retried like webhooks.
    dicom_uid_root: str = "1.2.826.0.1.3680043.8.498."
    pacs_destinations: dict[str, Destination] = {}
    pacs_max_attempts: int = Field(8, ge=1, le=50)
    pacs_backoff_seconds: float = Field(10.0, gt=0)  # doubled after each failed attempt, capped below
    pacs_backoff_max_seconds: float = Field(3600.0, gt=0)
    pacs_timeout_seconds: float = Field(60.0, gt=0)  # one attempt: association or HTTP request

    @field_validator("storage_dir", "model_dir", "redis_data_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        from .jobs.connection import parse_sentinel

        if v:
            parse_sentinel(v)  # a malformed sentinel:// URL is refused at start-up, naming what to change
        return v

    @property
    def ack_replicas(self) -> int:
        from .jobs.connection import is_sentinel

        if self.redis_ack_replicas is not None:
            return self.redis_ack_replicas
        return 1 if is_sentinel(self.redis_url) else 0

    @field_validator("webhook_secret", "webhook_tenant_secrets", mode="after")
    @classmethod
    def _webhook_secrets(cls, v: str | None) -> str | None:
        from .webhooks.signing import parse_secret

        for item in filter(None, (p.strip() for p in (v or "").split(","))):
            parse_secret(item.rpartition(":")[2] if ":" in item else item)
        return v

    @field_validator("dicom_uid_root", mode="after")
    @classmethod
    def _uid_root(cls, v: str) -> str:
        return check_uid_root(v)

    @field_validator("webhook_secret", mode="after")
    @classmethod
    def _empty_secret_is_none(cls, v: str | None) -> str | None:
        return v or None  # compose passes an unset secret as ""

    @property
    def tenants_by_key(self) -> dict[str, str]:
        """Parsed ``api_keys``: key → tenant."""
        out: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in self.api_keys.split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError("TUMORSYNTH_API_KEYS must look like 'tenantA:keyA,tenantB:keyB'")
            out[key] = tenant
        return out

    def tenant_for_key(self, key: str) -> str | None:
        """Constant-time lookup: every configured key is compared, so timing does not reveal a prefix."""
        found = None
        for known, tenant in self.tenants_by_key.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = tenant
        return found

    def webhook_secret_for(self, tenant: str) -> str | None:
        for item in filter(None, (p.strip() for p in self.webhook_tenant_secrets.split(","))):
            name, _, secret = item.partition(":")
            if name == tenant and secret:
                return secret
        return self.webhook_secret

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tenants_by_key)

    def queue_for(self, family: str) -> str:
        return self.family_queues.get(family, DEFAULT_QUEUE)

    def queues(self, families: Iterable[str]) -> list[str]:
        """Every queue a job of ``families`` can be sent to (the API passes the registered families)."""
        return sorted({self.queue_for(f) for f in families})

    def check_safe_to_serve(self, host: str) -> None:
        """Refuse unsafe defaults outside loopback: no API keys, or a default, placeholder or short secret.

        Messages name the setting and the tenant, never the secret.
        """
        if is_loopback(host):
            return
        if not self.auth_enabled:
            raise ValueError(
                f"refusing to listen on {host} without API keys: set TUMORSYNTH_API_KEYS or bind to 127.0.0.1"
            )
        fix = "use a random one: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        for key, tenant in self.tenants_by_key.items():
            if why := weak_secret(key):
                raise ValueError(f"refusing to serve: the API key of tenant {tenant!r} {why}; {fix}")
        if self.s3_secret_key and (why := weak_secret(self.s3_secret_key)):
            raise ValueError(f"refusing to serve: TUMORSYNTH_S3_SECRET_KEY {why}; {fix}")
        if self.url_signing_key and (why := weak_secret(self.url_signing_key)):
            raise ValueError(f"refusing to serve: TUMORSYNTH_URL_SIGNING_KEY {why}; {fix} (or leave it unset)")


def weak_secret(secret: str) -> str | None:
    """Why ``secret`` must not guard a service reachable from other machines, or None."""
    if secret.lower() in DEFAULT_SECRETS:
        return "is a well-known default"
    if PLACEHOLDER.search(secret):
        return "is the example's placeholder"
    if len(secret) < MIN_SECRET_CHARS:
        return f"is shorter than {MIN_SECRET_CHARS} characters"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
