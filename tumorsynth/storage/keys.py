"""The one place object keys are built: ``tenants/{tenant}/...``, never from a client's file name."""

from __future__ import annotations

import re

from ..errors import InvalidRequest

COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_RULE = "1-128 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit, without '..'"


def component(field_name: str, value: str) -> str:
    """``value`` if it is safe as one path component of a key, else ``InvalidRequest`` naming ``field_name``."""
    if not isinstance(value, str) or not COMPONENT.fullmatch(value) or ".." in value:
        raise InvalidRequest.for_field(field_name, f"must be {_RULE}; got {str(value)[:40]!r}")
    return value


def tenant_prefix(tenant: str) -> str:
    return f"tenants/{component('tenant', tenant)}/"


def job_prefix(tenant: str, job_id: str) -> str:
    return f"{tenant_prefix(tenant)}jobs/{component('job_id', job_id)}/"


def input_key(tenant: str, job_id: str, name: str) -> str:
    return f"{job_prefix(tenant, job_id)}inputs/{component('name', name)}"


def output_key(tenant: str, job_id: str, filename: str) -> str:
    return f"{job_prefix(tenant, job_id)}outputs/{component('filename', filename)}"


def attempt_outputs_prefix(tenant: str, job_id: str, attempt: int) -> str:
    """Where one attempt of a job writes. Attempts never share a key, so a stale attempt that wakes up late can
    neither overwrite nor delete the outputs of the attempt that owns the job."""
    if not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"an attempt number is a positive integer, got {attempt!r}")
    return f"{job_prefix(tenant, job_id)}outputs/attempt-{attempt}/"


def attempt_output_key(tenant: str, job_id: str, attempt: int, filename: str) -> str:
    return f"{attempt_outputs_prefix(tenant, job_id, attempt)}{component('filename', filename)}"


def mask_bank_key(tenant: str, mask_id: str, name: str) -> str:
    return f"{tenant_prefix(tenant)}masks/{component('mask_id', mask_id)}/{component('name', name)}"


def batch_key(tenant: str, batch_id: str, filename: str) -> str:
    return f"{tenant_prefix(tenant)}batches/{component('batch_id', batch_id)}/{component('filename', filename)}"


def tenant_of(key: str) -> str | None:
    """The tenant a key belongs to, or None for a key outside ``tenants/`` (which then belongs to no tenant)."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != "tenants" or not parts[2]:
        return None
    tenant = parts[1]
    if not COMPONENT.fullmatch(tenant) or ".." in tenant:
        return None
    return tenant


def object_kind(key: str) -> str | None:
    """``input`` / ``output`` / ``mask`` / ``manifest`` for keys this module builds (S3 lifecycle rules use it)."""
    parts = key.split("/")
    if len(parts) >= 5 and parts[0] == "tenants" and parts[2] == "jobs":
        return {"inputs": "input", "outputs": "output"}.get(parts[4])
    if len(parts) >= 3 and parts[0] == "tenants":
        return {"masks": "mask", "batches": "manifest"}.get(parts[2])
    return None
