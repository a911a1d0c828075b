"""Job records, owned by the service (Celery's result backend is not the source of truth), and their state machine."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from ..schemas import TERMINAL, JobStatus

# Which transitions a record may make. Anything else is a bug or a stale worker and is refused.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "canceled", "failed"}),
    "running": frozenset({"succeeded", "failed", "canceling", "queued"}),  # queued: lease lapsed, requeued
    "canceling": frozenset({"canceled", "succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "canceled": frozenset(),
}


def now() -> float:
    return time.time()


def rfc3339(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    """Sortable by creation time (ms) with 80 random bits: ``job_01h...``-like, unguessable."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def is_id(prefix: str, value: str) -> bool:
    """Whether ``value`` has the shape ``new_id(prefix)`` gives; nothing else may reach a Redis key."""
    return isinstance(value, str) and re.fullmatch(rf"{prefix}_[0-9a-f]{{32}}", value) is not None


class Lease(BaseModel):
    owner: str
    token: int  # the attempt number: a fencing token, so a stale worker cannot overwrite a newer attempt
    expires_at: float


class StoredInput(BaseModel):
    name: str
    key: str
    sha256: str
    size: int
    shape: list[int]
    spacing: list[float]
    compressed: bool = True
    label_convention: str | None = None
    labels: list[int] | None = None


class StoredOutput(BaseModel):
    name: str
    key: str
    modality: str
    sample_index: int | None
    kind: str = "image"
    size: int
    sha256: str
    shape: list[int] | None = None
    spacing: list[float] | None = None


class JobRecord(BaseModel):
    id: str
    tenant: str
    model: str
    family: str
    queue: str
    status: JobStatus = "queued"
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    started_at: float | None = None
    completed_at: float | None = None
    request: dict[str, Any]
    inputs: list[StoredInput] = []
    outputs: list[StoredOutput] = []
    completed_steps: int = 0
    total_steps: int = 0
    attempts: int = 0
    resends: int = 0  # times the reaper queued it again after its broker message was lost (reconciliation)
    lease: Lease | None = None
    error: dict[str, str] | None = None
    run_seconds: float | None = None
    queue_seconds: float | None = None
    batch_id: str | None = None
    idempotency_key: str | None = None
    body_sha256: str | None = None
    delivery: dict[str, Any] | None = None  # send_to "pacs": the outcome, written by the PACS delivery loop

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def move(self, status: JobStatus) -> None:
        if status not in TRANSITIONS[self.status]:
            raise ValueError(f"job {self.id}: {self.status} → {status} is not a valid transition")
        self.status = status
        t = now()
        self.updated_at = t
        if status in TERMINAL:
            self.completed_at = t
            self.lease = None
